"""Typed SQLAlchemy 2 models: the tables that are continuum's source of truth.

Celery only carries job ids; everything a job needs or produces is a row here (plus objects in the
object store that rows point to). Unique keys make side effects effectively-once: a retried job that
inserts the same row hits the key instead of duplicating it.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger there would break autoincrement.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"

    @property
    def finished(self) -> bool:
        return self in {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.skipped}


class Feedback(Base):
    """One user judgement of one model response. `dataset_id` set = claimed by exactly one export."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_id: Mapped[str | None] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[Any] | None] = mapped_column(JSON)
    feedback: Mapped[str] = mapped_column(String(20))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # No foreign key to datasets.id, on purpose: the export sets `dataset_id` on up to millions of rows
    # in one UPDATE, and a foreign key runs its check trigger once per row (~25% of the claim's time).
    # Integrity holds without it: the only writer is the export, which inserts the datasets row and
    # claims the rows in the SAME transaction (both commit or neither does), and datasets rows are never
    # deleted.
    dataset_id: Mapped[int | None] = mapped_column(Integer)

    # Every index on `feedback` costs one more index insert per row the export claims (a claim is a
    # non-HOT UPDATE of each row), so only indexes a query needs exist:
    # * ix_feedback_unclaimed — the export scans the unclaimed rows in id order, cheap as history grows;
    # * ux_feedback_external_id — the importer's ON CONFLICT target. Partial: rows without an external
    #   id (most) stay out of it, so claiming them inserts nothing there.
    # No index on content_hash (dedup sorts each claimed batch; no query looks a hash up) nor on
    # dataset_id (the export reads its batch back by the primary-key range it claimed).
    __table_args__ = (
        Index(
            "ix_feedback_unclaimed",
            "id",
            postgresql_where=text("dataset_id IS NULL"),
            sqlite_where=text("dataset_id IS NULL"),
        ),
        Index(
            "ux_feedback_external_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
            sqlite_where=text("external_id IS NOT NULL"),
        ),
    )


class FeedbackContent(Base):
    """Every judged content (`content_hash`: conversation, response, feedback) ever imported, once.

    The importer claims a hash here before inserting its row, so the same judgement imported twice
    is a duplicate. A table of its own, not a unique index on `feedback.content_hash`: the export
    updates every feedback row it claims, and each index there is one more insert per claimed row.
    """

    __tablename__ = "feedback_content"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)


class FeedbackQuarantine(Base):
    """An input row that failed validation, kept with where it came from and why."""

    __tablename__ = "feedback_quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(500))
    line_number: Mapped[int | None] = mapped_column(Integer)
    raw: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServedResponse(Base):
    """An answer `continuum serve` gave, kept so feedback can name it by `id` alone.

    Feedback on a served answer then carries exactly what the model saw and said (the conversation and
    the response), not what an application remembers of it.
    """

    __tablename__ = "served_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter_id: Mapped[int | None] = mapped_column(Integer)  # None: the base model answered
    model: Mapped[str] = mapped_column(String(200))  # the served name, e.g. `default@v3` or `base`
    messages: Mapped[list[Any]] = mapped_column(JSON)  # the conversation before the answer
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OnlineTurn(Base):
    """A served chat turn waiting for (or done with) the online learner of its lineage.

    Turns are applied in `id` order by one online job at a time per lineage (the lineage lock), so
    updates land in the order the turns were said, whichever worker runs the job.
    """

    __tablename__ = "online_turns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lineage: Mapped[str] = mapped_column(String(100), index=True)
    response_id: Mapped[str | None] = mapped_column(String(64))
    messages: Mapped[list[Any]] = mapped_column(JSON)  # the conversation up to the user's turn
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column()
    turn_number: Mapped[int | None] = mapped_column(Integer)  # the n-th turn its lineage learnt from
    kind: Mapped[str | None] = mapped_column(String(20))  # chat | question | fact (set when applied)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # what the learner did with it


class FactMemory(Base):
    """One fact of a lineage's fact memory (`common.online.memory` has the rules)."""

    __tablename__ = "facts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lineage: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(500))
    text: Mapped[str] = mapped_column(Text)
    relation: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(300))
    object: Mapped[str] = mapped_column(String(300))
    entities: Mapped[list[Any]] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    times_seen: Mapped[int] = mapped_column(Integer)
    first_turn: Mapped[int] = mapped_column(Integer)
    last_turn: Mapped[int] = mapped_column(Integer)
    importance: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("lineage", "key", name="uq_facts_lineage_key"),)


class LineageLock(Base):
    """Who may write a lineage's versions and online state now: a batch cycle or the online learner.

    Taken by compare-and-set (free, expired, or already ours) and held with an expiry the holder
    renews, so a holder that died frees the lineage by itself (`common.ledger.lineage_lock`).
    """

    __tablename__ = "lineage_locks"

    lineage: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column()


class Dataset(Base):
    """A published dataset shard (+ manifest) in the object store; exists only once fully written."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32), default="feedback")
    uri: Mapped[str] = mapped_column(String(1000))
    manifest_key: Mapped[str] = mapped_column(String(1000))
    num_rows: Mapped[int] = mapped_column(Integer)
    num_train: Mapped[int] = mapped_column(Integer)
    num_holdout: Mapped[int] = mapped_column(Integer)
    num_duplicates: Mapped[int] = mapped_column(Integer, default=0)
    num_skipped: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer)
    min_feedback_id: Mapped[int | None] = mapped_column(BigId)
    max_feedback_id: Mapped[int | None] = mapped_column(BigId)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    # 'pending': rows claimed and committed, shard not yet finalised (the export uploads outside any
    # database transaction); 'ready': published, its manifest exists. Readers use only 'ready'.
    state: Mapped[str] = mapped_column(String(20), default="ready", server_default=text("'ready'"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineRun(Base):
    """One export → fisher → train → evaluate → promote run; unique per (schedule, tick)."""

    __tablename__ = "pipeline_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    schedule: Mapped[str | None] = mapped_column(String(100))
    tick: Mapped[datetime | None] = mapped_column()
    state: Mapped[str] = mapped_column(String(20), default=JobState.queued.value)
    current_step: Mapped[str | None] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    """The ledger row of one job. Celery carries only `id`; the state machine lives here."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    state: Mapped[str] = mapped_column(String(20), default=JobState.queued.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # The fencing token: bumped by every successful claim and never reset (attempts is not strictly
    # increasing: a hand-back gives the attempt back). A final write is accepted only with the token
    # of the live lease, so a stale runner's work never becomes visible.
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Consecutive hand-backs (release) without progress; past the cap the job is dead-lettered.
    releases: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # --- issue 9 F: bounded re-sends (common.orchestration.reaper) ---
    # Re-sends of a never-claimed queued job by the reaper; past `queued_max_resends` it is failed.
    send_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_sent_at: Mapped[datetime | None] = mapped_column()
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    pipeline_run_id: Mapped[str | None] = mapped_column(ForeignKey("pipeline_runs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class FisherArtifact(Base):
    """A diagonal Fisher over LoRA parameters (safetensors in the object store)."""

    __tablename__ = "fisher"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(String(1000))
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("fisher.id"))
    dataset_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    num_samples: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(32))
    gamma: Mapped[float] = mapped_column(Float)
    base_model: Mapped[str] = mapped_column(String(500))
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UnitCalibration(Base):
    """Per-unit activation statistics of a base model's MLPs on a background corpus (sparse memory's
    TF-IDF gate; safetensors + JSON in the object store). Computed once per lineage, base model,
    background corpus and active fraction, and reused by every cycle of that lineage, so its adapters'
    units are all chosen against the same statistics; each adapter records the calibration it used."""

    __tablename__ = "unit_calibrations"
    __table_args__ = (Index("ix_unit_calibrations_lookup", "adapter_name", "base_model", "background_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(String(1000))  # object-store prefix of the two files
    adapter_name: Mapped[str] = mapped_column(String(100))
    base_model: Mapped[str] = mapped_column(String(500))
    background_sha256: Mapped[str] = mapped_column(String(64))
    texts: Mapped[int] = mapped_column(Integer)
    active_fraction: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DocumentComparison(Base):
    """One `continuum documents compare` run: every strategy's figures on the same documents and QA
    pairs (QA accuracy, general retention, forgetting ratio, times, artifact size); the report shows them."""

    __tablename__ = "document_comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    base_model: Mapped[str] = mapped_column(String(500))
    documents: Mapped[list[Any]] = mapped_column(JSON, default=list)  # titles
    questions: Mapped[int] = mapped_column(Integer)
    results: Mapped[list[Any]] = mapped_column(JSON, default=list)  # one object per strategy
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Adapter(Base):
    """One published adapter version (PEFT format); `parent_id` links the continual lineage."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), default="default")
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    lineage: Mapped[list[Any]] = mapped_column(JSON, default=list)
    base_model: Mapped[str] = mapped_column(String(500))
    uri: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), default="candidate")
    dataset_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    fisher_id: Mapped[int | None] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("name", "version", name="uq_adapters_name_version"),)


class Alias(Base):
    """A movable name (`production`) pointing at an adapter; `revision` makes moves compare-and-set."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasHistory(Base):
    """Append-only record of every attempt to move an alias, successful or not."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(100), index=True)
    action: Mapped[str] = mapped_column(String(20))
    from_adapter_id: Mapped[int | None] = mapped_column(Integer)
    to_adapter_id: Mapped[int | None] = mapped_column(Integer)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """Metrics of one candidate adapter (`workers.learning.evaluation`: recall, generalisation, forgetting,
    general retention, suppression) and whether it passed the promotion gate."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    passed_gate: Mapped[bool | None] = mapped_column(Boolean)
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetScore(Base):
    """An adapter's retention score on one dataset's probe rows (taught once, never replayed).

    Written by the evaluate job for the candidate: its score on the datasets it taught (their
    "first taught" score, what later forgetting is measured against) and on every earlier dataset of
    its lineage. The accuracy matrix (versions × datasets) and backward transfer are read from here.
    """

    __tablename__ = "dataset_scores"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    token_accuracy: Mapped[float | None] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A live (or once-live) worker: what it can serve and when it last said so."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    device: Mapped[str] = mapped_column(String(20))
    memory_bytes: Mapped[int | None] = mapped_column(BigId)
    queues: Mapped[list[Any]] = mapped_column(JSON, default=list)
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Document(Base):
    """A document to learn from (`continuum documents add`); its text is in the object store.

    The row is written only after the text object is complete, and the text's sha256 is unique, so
    adding the same document twice (under any file name) is a no-op.
    """

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(1000))
    size_bytes: Mapped[int] = mapped_column(Integer)
    text_key: Mapped[str] = mapped_column(String(1000))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))  # the latest ingest's dataset
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DocumentQA(Base):
    """A question about the documents with its answer: evaluation only, never trained on."""

    __tablename__ = "document_qa"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of (question, answer): re-adding is a no-op
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id"))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
