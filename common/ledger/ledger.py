"""The job ledger: every job is a row, and every state change is one conditional UPDATE.

Celery messages only say "look at job X". Whether X may run is decided here, atomically, by the
database: a claim succeeds only for a job that is `queued`, or `running` under an *expired* lease, and
still has attempts left. A redelivered or duplicated message therefore does nothing while the job runs
under a live lease or after it finished. All transitions out of `running` are guarded by the lease
owner, so a worker that lost its lease (paused, partitioned) can no longer record anything.

Every hot-path transition (create, claim, heartbeat, finish) is ONE statement with RETURNING, run in
autocommit: a single statement is atomic on its own, and skipping BEGIN/COMMIT round trips keeps the
ledger's cost per job close to Celery's own (bench/dispatch.py).

Lease times come from the DATABASE's clock (`dbclock`): a process whose own clock is skewed can
neither steal a live lease nor keep a dead one. Every claim bumps `lease_token`, the fencing token that
a job's final write must still hold (`fenced_finish`).

Times are UTC (SQLite stores them naive, in UTC).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, create_engine, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Job, JobState
from common.errors import DatabaseUnavailable, NotFound, ValidationError
from common.ledger.dbclock import db_now, seconds_from_now
from common.ledger.driver_statements import DriverStatements
from common.ledger.fencing import FencedWrites
from common.ledger.reaping import ReapResult, Reaping  # noqa: F401 - ReapResult is part of the API
from common.ledger.statements import HotStatements

Clock = Callable[[], datetime]

# A job handed back this many times in a row without progress is dead-lettered (a poison job that is
# always stopped before it gets anywhere would otherwise loop forever: a release gives the attempt back).
DEFAULT_MAX_RELEASES = 5

_FINISHED = [s.value for s in JobState if s.finished]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ClaimOutcome(str, enum.Enum):
    """What a claim attempt found. Only `claimed` lets the caller run the job."""

    claimed = "claimed"
    busy = "busy"  # running under someone's live lease: a duplicate delivery, do nothing
    finished = "finished"  # already succeeded/failed/cancelled/skipped: do nothing
    cancelled = "cancelled"  # cancel was requested before it started: now `cancelled`
    exhausted = "exhausted"  # out of attempts: now `failed` for good (dead letter)
    missing = "missing"  # no such job (deleted, or a message from another database)
    refused = "refused"  # the message reached a task of another kind, or another queue: nothing changed


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is ClaimOutcome.claimed

    @property
    def token(self) -> int | None:
        """The fencing token of a successful claim (the job's new `lease_token`)."""
        return self.job.lease_token if self.ok and self.job is not None else None


@dataclass(frozen=True)
class Heartbeat:
    """Result of a lease renewal: keep going only while `lease_held` and not `cancel_requested`."""

    lease_held: bool
    cancel_requested: bool
    finished: bool = False  # the job was finished by this attempt's own fenced final write


class JobLedger(FencedWrites, Reaping):
    """Create, claim and finish jobs; all methods are safe to call from many processes at once."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utc_now,
                 max_releases: int = DEFAULT_MAX_RELEASES):
        self._sessions = sessions
        # Only non-lease times (created_at of new rows) come from this clock; leases use the database's.
        self._clock = clock
        self.max_releases = max_releases
        bind: Engine = sessions.kw["bind"]
        if bind.dialect.name == "postgresql":
            # Its own small pool: autocommit connections need no reset-on-return ROLLBACK, and instead of
            # a pre-ping per checkout a statement that meets a dead connection is retried once.
            self._autocommit = create_engine(
                bind.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, pool_size=4, max_overflow=8
            )
            self._owns_autocommit = True
        else:
            self._autocommit = bind.execution_options(isolation_level="AUTOCOMMIT")
            self._owns_autocommit = False
        self._hot = HotStatements(bind.dialect.name)
        # Postgres: the three per-job statements go straight to the driver as SQL compiled once;
        # SQLAlchemy's execution layer cost ~0.2 ms of CPU per statement, a third of the ledger's
        # cost per job on 2 busy cores (bench/dispatch.py). Same statements, same guarantees.
        self._driver = DriverStatements(self._hot, self._autocommit) if self._owns_autocommit else None

    def close(self) -> None:
        """Release the ledger's own connections (the session factory's engine is the caller's)."""
        if self._owns_autocommit:
            self._autocommit.dispose()

    def _one_statement(self, statement, parameters: dict[str, Any] | None = None):
        """Run one statement in autocommit; returns the first row (RETURNING) or the rowcount.

        Retrying after a dropped connection is safe for every statement here: each is conditional, so
        a retry of one that did commit finds nothing to do (a claim then reads as `busy`, and the
        lease expiry brings the job back).
        """
        for attempt in (1, 2):
            try:
                with self._autocommit.connect() as conn:
                    result = conn.execute(statement, parameters)
                    return result.first() if result.returns_rows else result.rowcount
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                if isinstance(exc, OperationalError):
                    raise DatabaseUnavailable(
                        f"database unreachable or busy ({exc.orig.__class__.__name__}): check CONTINUUM_DATABASE_URL and that the server is up"
                    ) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _hot_statement(self, name: str, parameters: dict[str, Any]) -> dict[str, Any] | int | None:
        """Run one of the hot statements (`create`, `claim`, `finish`): the RETURNING row as a dict
        (None when no row matched), or the rowcount."""
        if self._driver is not None:
            try:
                return self._driver.run(name, parameters)
            except DBAPIError as exc:
                if isinstance(exc, OperationalError):
                    raise DatabaseUnavailable(
                        f"database unreachable or busy ({exc.orig.__class__.__name__}): check CONTINUUM_DATABASE_URL and that the server is up"
                    ) from exc
                raise
        found = self._one_statement(getattr(self._hot, name), parameters)
        return dict(found._mapping) if found is not None and not isinstance(found, int) else found

    @property
    def engine(self) -> Engine:
        return self._sessions.kw["bind"]

    # ---------------------------------------------------------------- creation and reading

    def create(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        queue: str,
        idempotency_key: str | None = None,
        max_attempts: int = 3,
        pipeline_run_id: str | None = None,
        job_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job unless one with `idempotency_key` exists; returns (job, created).

        INSERT … ON CONFLICT DO NOTHING: two producers racing with the same key get the same row.
        `job_id` is for clients that choose the id themselves (workers.runner.submission); default a new UUID.
        """
        if max_attempts < 1:
            raise ValidationError("max_attempts must be at least 1")
        job_id = job_id or str(uuid.uuid4())
        key = idempotency_key or f"job:{job_id}"
        now = self._clock()
        values = dict(
            id=job_id, kind=kind, params=params or {}, queue=queue, state=JobState.queued.value, attempts=0,
            max_attempts=max_attempts, cancel_requested=False, idempotency_key=key,
            pipeline_run_id=pipeline_run_id, created_at=now, updated_at=now,
        )
        # RETURNING: the common case (a new key) costs one round trip; only a conflict reads back.
        inserted = self._hot_statement("create", values)
        if inserted is not None:
            job = Job(**values)
        else:
            with session_scope(self._sessions) as session:
                job = session.scalars(select(Job).where(Job.idempotency_key == key)).one()
        if job.kind != kind:
            raise ValidationError(
                f"idempotency key {key!r} already names a {job.kind!r} job, not {kind!r}: use another key"
            )
        return job, job.id == job_id

    def get(self, job_id: str) -> Job:
        with session_scope(self._sessions) as session:
            job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: list jobs with `continuum jobs list`")
        return job

    def resolve(self, given: str) -> str:
        """The full id of the one job whose id is `given` or starts with it (git-style prefix)."""
        from common.db.id_prefix import resolve_id

        return resolve_id(self._sessions, Job, given, "job", "continuum jobs list")

    def find(self, job_id: str) -> Job | None:
        with session_scope(self._sessions) as session:
            return session.get(Job, job_id)

    def list(self, *, state: str | None = None, pipeline_run_id: str | None = None, limit: int = 100) -> list[Job]:
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if state:
            query = query.where(Job.state == state)
        if pipeline_run_id:
            query = query.where(Job.pipeline_run_id == pipeline_run_id)
        with session_scope(self._sessions) as session:
            return list(session.scalars(query))

    # ---------------------------------------------------------------- the lease

    def claim(self, job_id: str, owner: str, lease_seconds: float, kind: str | None = None,
              queue: str | None = None) -> Claim:
        """Take the job if it is queued, or running under an expired lease, and has attempts left.

        A successful claim bumps the job's fencing token (`Claim.token`). A refusal is explained, and
        only a job that is *still* out of attempts (or cancelled) when we look is closed: a duplicate
        delivery that races the holder's hand-back must never dead-letter a job with attempts left.
        With `kind`/`queue` (the claiming task's), a job of another kind or queue is `refused` untouched.
        """
        for _ in range(3):
            claimed = self._hot_statement(
                "claim", {"job_id": job_id, "owner": owner, "lease_seconds": float(lease_seconds),
                          "claim_kind": kind, "claim_queue": queue}
            )
            if claimed is not None:
                return Claim(ClaimOutcome.claimed, Job(**claimed))
            refusal = self._explain_refusal(job_id, kind, queue)
            if refusal is not None:
                return refusal
            # The job changed between our claim and our look (e.g. handed back to the queue): try again.
        job = self.find(job_id)
        return Claim(ClaimOutcome.busy, job) if job is not None else Claim(ClaimOutcome.missing)

    def _explain_refusal(self, job_id: str, kind: str | None = None, queue: str | None = None) -> Claim | None:
        """Why the claim found nothing to take; None when the job is claimable after all (it moved)."""
        job = self.find(job_id)
        if job is None:
            return Claim(ClaimOutcome.missing)
        if (kind is not None and job.kind != kind) or (queue is not None and job.queue != queue):
            return Claim(ClaimOutcome.refused, job)
        state = JobState(job.state)
        if state.finished:
            return Claim(ClaimOutcome.finished, job)
        if state is JobState.running and not self._lease_expired(job_id):
            return Claim(ClaimOutcome.busy, job)
        # Queued, or running under a dead lease, yet not claimable: cancelled or out of attempts —
        # each closing UPDATE re-checks its own reason, so a job that just came back with attempts
        # left is not touched (the race that used to say "gave up after 0 attempts").
        if job.cancel_requested and self._finish_unowned(
            job_id, JobState.cancelled, "cancelled before it could run", Job.cancel_requested.is_(True)
        ):
            return Claim(ClaimOutcome.cancelled, self.get(job_id))
        reason = f"gave up after {job.attempts} attempts; last error: {job.error or 'worker lost (lease expired)'}"
        if self._finish_unowned(job_id, JobState.failed, reason, Job.attempts >= Job.max_attempts):
            return Claim(ClaimOutcome.exhausted, self.get(job_id))
        return None  # it moved under us (handed back, lease just expired, …): the caller claims again

    def _lease_expired(self, job_id: str) -> bool:
        with session_scope(self._sessions) as session:
            return bool(session.scalar(
                select(func.count()).select_from(Job).where(Job.id == job_id, Job.lease_expires_at < db_now())
            ))

    def _finish_unowned(self, job_id: str, state: JobState, error: str, *conditions: Any) -> bool:
        """Close a job nobody holds a live lease on (queued, or its lease expired), if `conditions`
        still hold; returns whether it did."""
        now = db_now()
        with session_scope(self._sessions) as session:
            return bool(session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    (Job.state == JobState.queued.value)
                    | ((Job.state == JobState.running.value) & (Job.lease_expires_at < now)),
                    *conditions,
                )
                .values(state=state.value, error=error, lease_owner=None, lease_expires_at=None,
                        finished_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount)

    def heartbeat(
        self, job_id: str, owner: str, lease_seconds: float, progress: dict[str, Any] | None = None,
        token: int | None = None,
    ) -> Heartbeat:
        """Extend the lease (and record progress); tells whether we still hold it and if cancel was asked.

        The new expiry is the database's now + `lease_seconds`: the caller's clock plays no part.
        """
        now = db_now()
        values: dict[str, Any] = dict(
            lease_expires_at=seconds_from_now(lease_seconds), heartbeat_at=now, updated_at=now
        )
        if progress is not None:
            values["progress"] = progress
        row = self._one_statement(
            update(Job)
            .where(*self._holds(job_id, owner, token))
            .values(**values)
            .returning(Job.cancel_requested)
        )
        if row is None:  # lease lost; still tell whether a cancel was asked for
            with session_scope(self._sessions) as session:
                found = session.execute(
                    select(Job.cancel_requested, Job.state, Job.lease_token).where(Job.id == job_id)
                ).first()
            if found is not None and token is not None and found.lease_token == token and found.state in (
                JobState.succeeded.value, JobState.skipped.value
            ):
                # Our own job process's fenced final write finished the job: nothing was lost; let the
                # runner wait for the process to exit with its result instead of killing it.
                return Heartbeat(lease_held=True, cancel_requested=False, finished=True)
            return Heartbeat(lease_held=False, cancel_requested=bool(found and found.cancel_requested))
        return Heartbeat(lease_held=True, cancel_requested=bool(row.cancel_requested))

    @staticmethod
    def _holds(job_id: str, owner: str, token: int | None, *extra: Any) -> list[Any]:
        """WHERE: `owner` (with `token`, when given) holds the job's lease. Owners are unique per claim."""
        where = [Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value, *extra]
        if token is not None:
            where.append(Job.lease_token == token)
        return where

    def _transition(self, job_id: str, owner: str, *extra: Any, token: int | None = None, **values: Any) -> bool:
        """Leave `running`, only if `owner` still holds the lease. Returns whether it did."""
        values.setdefault("updated_at", db_now())
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
        return bool(self._one_statement(
            update(Job).where(*self._holds(job_id, owner, token, *extra)).values(**values)
        ))

    def succeed(self, job_id: str, owner: str, result: dict[str, Any] | None = None,
                state: JobState = JobState.succeeded, token: int | None = None) -> bool:
        """Record success (or `skipped`), only under a live lease (database clock); returns whether
        it was accepted. A job whose logic already finished it with `fenced_finish` reads as not
        accepted here: use `finished_with` to tell that our own fenced write did it."""
        del token  # the owner is unique per claim; the statement is compiled once without it
        return bool(self._hot_statement(
            "finish",
            {"job_id": job_id, "owner": owner, "new_state": state.value, "result": result or {}},
        ))

    def fail(self, job_id: str, owner: str, error: str, *, retryable: bool) -> JobState:
        """Record a failed attempt: back to `queued` if retryable with attempts left, else `failed`.

        Returns the state the job is now in (the caller re-sends the message when it is `queued`).
        """
        job = self.get(job_id)
        again = retryable and job.attempts < job.max_attempts and not job.cancel_requested
        if again:
            moved = self._transition(job_id, owner, state=JobState.queued.value, error=error)
            return JobState.queued if moved else JobState(self.get(job_id).state)
        if not retryable:
            reason = error
        elif job.cancel_requested:
            reason = f"cancel requested; last error: {error}"
        else:
            reason = f"gave up after {job.attempts} attempts; last error: {error}"
        self._transition(job_id, owner, state=JobState.failed.value, error=reason, finished_at=db_now())
        return JobState(self.get(job_id).state)

    def release(self, job_id: str, owner: str, reason: str, *, made_progress: bool = True,
                token: int | None = None) -> bool:
        """Hand the job back after a clean checkpoint (shutdown, soft time limit); True when it is
        queued again (the caller re-sends it).

        A clean hand-back is not a failed try, so it gives the attempt back: a long job that is
        preempted many times is not dead-lettered for it. But a job handed back `max_releases` times
        in a row *without progress* is a poison job that would loop forever: it ends `failed`.
        """
        releases = Job.releases + 1 if not made_progress else 0
        if self._transition(
            job_id, owner, *([] if made_progress else [Job.releases + 1 < self.max_releases]), token=token,
            state=JobState.queued.value, attempts=Job.attempts - 1, releases=releases, error=f"requeued: {reason}",
        ):
            return True
        self._transition(
            job_id, owner, token=token, state=JobState.failed.value, releases=releases, finished_at=db_now(),
            error=(f"handed back {self.max_releases} times in a row without progress (last: {reason}); "
                   "raise its time limit or fix the job, then `continuum jobs retry`"),
        )
        return False

    def mark_cancelled(self, job_id: str, owner: str, reason: str = "cancelled on request") -> bool:
        return self._transition(job_id, owner, state=JobState.cancelled.value, error=reason, finished_at=db_now())

    def cancel_if_requested(self, job_id: str, owner: str) -> bool:
        """`owner` still holds the job and a cancel was requested: record it cancelled (a success that
        came after the cancel request is refused by `succeed`)."""
        return self._transition(job_id, owner, Job.cancel_requested.is_(True), state=JobState.cancelled.value,
                                error="cancelled on request", finished_at=db_now())

    def request_cancel(self, job_id: str) -> JobState:
        """Ask a job to stop: a queued job is cancelled now, a running one at its next heartbeat."""
        now = db_now()
        with session_scope(self._sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.queued.value)
                .values(state=JobState.cancelled.value, cancel_requested=True, error="cancelled on request",
                        finished_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.running.value)
                .values(cancel_requested=True, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        return JobState(self.get(job_id).state)

    def retry(self, job_id: str, extra_attempts: int = 1) -> Job:
        """Put a `failed` or `cancelled` job back in the queue with more attempts (operator action)."""
        now = db_now()
        with session_scope(self._sessions) as session:
            moved = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_([JobState.failed.value, JobState.cancelled.value]))
                # The old error goes: a queued job showing why it failed last time reads as failed.
                .values(state=JobState.queued.value, cancel_requested=False, releases=0, error=None,
                        max_attempts=Job.attempts + extra_attempts, finished_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
        job = self.get(job_id)
        if not moved:
            raise ValidationError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
        return job

    def counts_by_state(self, job_ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(Job.state, func.count()).group_by(Job.state)
        if job_ids is not None:
            query = query.where(Job.id.in_(list(job_ids)))
        with session_scope(self._sessions) as session:
            return {state: count for state, count in session.execute(query)}


def is_finished(state: str) -> bool:
    return state in _FINISHED

