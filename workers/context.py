"""What every job's logic receives: settings, database, object store, its job id and parameters, and
the two hooks the runner plugs in (progress reporting and the cancel/stop check).

The logic functions (`workers/<kind>/logic.py: run(ctx) -> dict`) know nothing about Celery or
subprocesses; the runner builds a JobContext, calls `run`, and records the returned JSON-able result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.objectstore import ObjectStore
from common.settings import Settings


def _no_progress(_progress: dict[str, Any]) -> None:
    return None


def _never_stop() -> bool:
    return False


@dataclass
class JobContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    job_id: str
    params: dict[str, Any] = field(default_factory=dict)
    # Called with {"step", "total", "loss", "tokens_per_s", ...}; the runner streams it to the ledger.
    report_progress: Callable[[dict[str, Any]], None] = _no_progress
    # True when the job should checkpoint and stop (cancel requested, soft time limit, worker shutdown).
    should_stop: Callable[[], bool] = _never_stop
    # Set by the runner: "cancel" or "requeue", to tell the logic why it is being stopped.
    stop_reason: Callable[[], str | None] = lambda: None


class JobInterrupted(Exception):
    """Raised by job logic that stopped early because `should_stop()` turned true, after saving its
    checkpoint. The runner then requeues the job (reason "requeue") or records it cancelled."""
