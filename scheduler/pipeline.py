"""The pipeline for the CLI, beat, the demo and tests, by settings (and optionally a Celery app).

The state machine lives in `common.orchestration.pipeline` (see there for how runs move and end);
these wrappers only build the process's orchestrator. They import downward only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Celery

from common.db.models import PipelineRun
from common.orchestration import pipeline as machine
from common.orchestration.pipeline import STEPS, schedule_key
from common.settings import Settings

__all__ = ["STEPS", "advance_pipeline", "cancel_pipeline", "pipeline_status", "resume_pipeline",
           "schedule_key", "start_pipeline"]


def _orch(settings: Settings, app: Celery | None = None):
    from workers.dispatch import orchestrator_for

    return orchestrator_for(settings, app)


def start_pipeline(settings: Settings, app: Celery | None = None, *, schedule: str | None = None,
                   tick: datetime | None = None, params: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> tuple[PipelineRun, bool]:
    """Create the run (unless its key exists) and enqueue its first step. Returns (run, created)."""
    return machine.start_pipeline(_orch(settings, app), schedule=schedule, tick=tick, params=params,
                                  idempotency_key=idempotency_key)


def advance_pipeline(settings: Settings, app: Celery | None, run_id: str) -> str:
    """Move the run on after its current step's job finished; returns the run's state."""
    return machine.advance_pipeline(_orch(settings, app), run_id)


def resume_pipeline(settings: Settings, run_id: str, step_params: dict[str, Any] | None = None) -> str:
    """Resume a failed, cancelled or stalled run from its current step; returns the step's job id."""
    return machine.resume_pipeline(_orch(settings), run_id, step_params)


def cancel_pipeline(settings: Settings, run_id: str) -> dict[str, Any]:
    """End a running run as cancelled and cancel its live step job."""
    return machine.cancel_pipeline(_orch(settings), run_id)


def pipeline_status(settings: Settings, run_id: str) -> dict[str, Any]:
    """The run and its step jobs, as plain data."""
    return machine.pipeline_status(_orch(settings), run_id)
