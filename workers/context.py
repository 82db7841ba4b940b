"""What every job's logic receives: settings, database, object store, its job id and parameters, and
the two hooks the runner plugs in (progress reporting and the cancel/stop check), and the lease it
runs under (owner + fencing token).

Fencing (guide §3): a job writes its artifacts under `ctx.attempt_prefix(...)` and makes its final
write — register the artifact row AND mark the job done — in one transaction that calls
`ctx.finish(session, result)`. That call raises `LeaseLost`/`CancelledAtFinish` (rolling the
transaction back) unless this attempt still holds the lease, so a stale runner's work never shows.

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
    # The lease this attempt runs under (set by the runner). Without a token (logic called directly,
    # e.g. in unit tests) `finish` records nothing and prefixes are not attempt-scoped.
    lease_owner: str | None = None
    lease_token: int | None = None
    ledger: Any = None  # common.ledger.JobLedger, when fenced

    @property
    def fenced(self) -> bool:
        return self.lease_token is not None and self.ledger is not None and self.lease_owner is not None

    def attempt_prefix(self, prefix: str) -> str:
        """`prefix/<token>`: each attempt writes its own objects, so a stale attempt still writing can
        never overwrite (or delete the manifest of) the files a registered row points at."""
        return f"{prefix.rstrip('/')}/{self.lease_token}" if self.lease_token is not None else prefix

    def finish(self, session: Session, result: dict[str, Any], *, skipped: bool = False) -> None:
        """Mark this job done inside `session`'s transaction (the one registering its artifact), only
        if this attempt still holds its lease; raises LeaseLost / CancelledAtFinish otherwise."""
        if not self.fenced:
            return
        from common.db.models import JobState

        state = JobState.skipped if skipped else JobState.succeeded
        self.ledger.fenced_finish(session, self.job_id, self.lease_owner, self.lease_token, result, state)

    def hold(self, session: Session) -> None:
        """Fence a write that is not the job's last (the job stays running): raises LeaseLost /
        CancelledAtFinish inside `session`'s transaction unless this attempt still holds the lease."""
        if self.fenced:
            self.ledger.fenced_check(session, self.job_id, self.lease_owner, self.lease_token)


class JobInterrupted(Exception):
    """Raised by job logic that stopped early because `should_stop()` turned true, after saving its
    checkpoint. The runner then requeues the job (reason "requeue") or records it cancelled."""
