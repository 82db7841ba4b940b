"""The reaper's half of the ledger: expired leases back to the queue (or dead), lost messages re-sent.

Mixed into `JobLedger` (which provides `_sessions`). Every move is a conditional UPDATE judged on the
database's clock, so two reapers at once never double-handle a job and a skewed reaper steals nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from common.db.engine import session_scope
from common.db.models import Job, JobState
from common.ledger.dbclock import db_now, seconds_from_now


@dataclass(frozen=True)
class ReapResult:
    requeued: list[str]  # running jobs whose lease expired, queued again: send their message again
    dead: list[str]  # expired and out of attempts: now `failed`
    resend: list[str]  # queued too long without a claim (message lost?): send their message again


class Reaping:
    def reap(self, resend_after_seconds: float) -> ReapResult:
        """Requeue running jobs whose lease expired (or fail them when out of attempts), and list
        queued jobs nobody claimed for `resend_after_seconds` (their message may be lost).

        Each move is a conditional UPDATE, so two reapers at once never double-handle a job. Lease
        expiry is judged by the database's clock, never this process's.
        """
        now = db_now()
        requeued: list[str] = []
        dead: list[str] = []
        resend: list[str] = []
        with session_scope(self._sessions) as session:
            expired = session.execute(
                select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.error).where(
                    Job.state == JobState.running.value, Job.lease_expires_at < now
                )
            ).all()
            stale = session.scalars(
                select(Job.id).where(
                    Job.state == JobState.queued.value,
                    Job.updated_at < seconds_from_now(-resend_after_seconds),
                )
            ).all()
        for job_id, attempts, max_attempts, cancel, error in expired:
            if cancel:
                target, note = JobState.cancelled, "cancelled (its worker was lost)"
            elif attempts >= max_attempts:
                target, note = JobState.failed, f"gave up after {attempts} attempts; last: worker lost (lease expired)"
            else:
                target, note = JobState.queued, f"lease expired (worker lost) after attempt {attempts}; requeued"
            if self._move_expired(job_id, target, note, now):
                (requeued if target is JobState.queued else dead).append(job_id)
        for job_id in stale:
            if self._touch_queued(job_id, now, resend_after_seconds):
                resend.append(job_id)
        return ReapResult(requeued=requeued, dead=dead, resend=resend)

    def _move_expired(self, job_id: str, target: JobState, note: str, now: Any) -> bool:
        values: dict[str, Any] = dict(state=target.value, lease_owner=None, lease_expires_at=None, updated_at=now)
        values["error"] = note
        if target.finished:
            values["finished_at"] = now
        with session_scope(self._sessions) as session:
            return bool(
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.running.value, Job.lease_expires_at < now)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                ).rowcount
            )

    def _touch_queued(self, job_id: str, now: Any, resend_after_seconds: float) -> bool:
        """Bump `updated_at` so only one reaper re-sends a stale job per period."""
        with session_scope(self._sessions) as session:
            return bool(
                session.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.state == JobState.queued.value,
                        Job.updated_at < seconds_from_now(-resend_after_seconds),
                    )
                    .values(updated_at=now)
                    .execution_options(synchronize_session=False)
                ).rowcount
            )
