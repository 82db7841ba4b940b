"""Database: typed SQLAlchemy models (the source of truth) and engine/session helpers."""

from common.db.engine import create_db_engine, session_factory, session_scope
from common.db.models import (
    Adapter,
    Alias,
    AliasHistory,
    Base,
    Dataset,
    DatasetScore,
    Evaluation,
    Feedback,
    FeedbackContent,
    FeedbackQuarantine,
    FisherArtifact,
    Job,
    JobState,
    PipelineRun,
    Worker,
)

__all__ = [
    "Adapter",
    "Alias",
    "AliasHistory",
    "Base",
    "Dataset",
    "DatasetScore",
    "Evaluation",
    "Feedback",
    "FeedbackContent",
    "FeedbackQuarantine",
    "FisherArtifact",
    "Job",
    "JobState",
    "PipelineRun",
    "Worker",
    "create_db_engine",
    "session_factory",
    "session_scope",
]
