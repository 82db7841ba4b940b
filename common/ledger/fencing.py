"""Fencing: the final write conditional on the lease, and the errors when it is refused.

A claim hands out a token (`jobs.lease_token`, bumped by every claim). A job's final write — register
its artifact row and mark the job done — runs in one transaction that first checks, on the database's
clock, that this runner still holds the lease with that token. When it does not, the transaction rolls
back and one of these is raised: the runner stops and records nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db.models import Job, JobState
from common.errors import ContinuumError
from common.ledger.dbclock import db_now


class FinishRefused(ContinuumError):
    """The final write was refused; nothing this attempt wrote became visible."""


class LeaseLost(FinishRefused):
    """Another attempt owns the job now (or our lease expired): a stale runner just stops.

    Deliberately neither Retryable nor Permanent: the runner must not retry, re-send or fail the job —
    the attempt that holds the lease is the one that records the outcome.
    """


class CancelledAtFinish(FinishRefused):
    """A cancel was requested before the final write: the job ends `cancelled`, not `succeeded`."""


class FencedWrites:
    """The fenced final write, mixed into `JobLedger` (which provides `find` and `_holds`)."""

    def finished_with(self, job_id: str, token: int) -> JobState | None:
        """The job's state when it ended as a success (succeeded/skipped) recorded under `token` —
        i.e. a fenced final write of the attempt with that token was accepted; else None."""
        job = self.find(job_id)
        if job is None or job.lease_token != token:
            return None
        state = JobState(job.state)
        return state if state in (JobState.succeeded, JobState.skipped) else None

    def fenced_finish(self, session: Session, job_id: str, owner: str, token: int,
                      result: dict[str, Any] | None = None, state: JobState = JobState.succeeded) -> None:
        """Mark the job done INSIDE the caller's transaction (the one registering its artifact),
        conditional on still holding the lease with `token`, unexpired on the database's clock, and
        no cancel requested. Raises LeaseLost or CancelledAtFinish otherwise: the caller's
        transaction must then roll back, so nothing of a stale attempt becomes visible.

        The UPDATE also takes the job row's write lock until the commit, so a claim or reaper racing
        the expiry waits for us and then sees a finished job.
        """
        now = db_now()
        self._fenced(session, job_id, owner, token, dict(
            state=state.value, result=result or {}, error=None, lease_owner=None, lease_expires_at=None,
            finished_at=now, updated_at=now,
        ))

    def fenced_check(self, session: Session, job_id: str, owner: str, token: int) -> None:
        """Like `fenced_finish` but leaves the job running: for a write that must be fenced yet is not
        the job's last step (promote moves the alias, then calls the serving engine). Holds the job
        row's lock until the caller's commit."""
        self._fenced(session, job_id, owner, token, dict(updated_at=db_now()))

    def _fenced(self, session: Session, job_id: str, owner: str, token: int, values: dict[str, Any]) -> None:
        moved = session.execute(
            update(Job)
            .where(*self._holds(job_id, owner, token, Job.lease_expires_at > db_now(),
                                Job.cancel_requested.is_(False)))
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved:
            return
        row = session.execute(
            select(Job.state, Job.lease_owner, Job.lease_token, Job.cancel_requested).where(Job.id == job_id)
        ).first()
        if row is not None and row.cancel_requested and row.lease_owner == owner and row.lease_token == token:
            raise CancelledAtFinish(f"job {job_id}: cancel requested before its final write; nothing was recorded")
        found = "missing" if row is None else f"{row.state}, token {row.lease_token}"
        raise LeaseLost(
            f"job {job_id}: lease with token {token} lost (job is {found}); this attempt's work is discarded"
        )
