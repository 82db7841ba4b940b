"""The job ledger: every job is a row, and every state change is one conditional UPDATE.

Celery messages only say "look at job X". Whether X may run is decided here, atomically, by the
database: a claim succeeds only for a job that is `queued`, or `running` under an *expired* lease, and
still has attempts left. A redelivered or duplicated message therefore does nothing while the job runs
under a live lease or after it finished. All transitions out of `running` are guarded by the lease
owner, so a worker that lost its lease (paused, partitioned) can no longer record anything.

Every hot-path transition (create, claim, heartbeat, finish) is ONE statement with RETURNING, run in
autocommit: a single statement is atomic on its own, and skipping BEGIN/COMMIT round trips keeps the
ledger's cost per job close to Celery's own (bench/dispatch.py).

Times are UTC. SQLite stores them naive; `_aware` reads them back as UTC.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Job, JobState
from common.errors import DatabaseUnavailable, NotFound, ValidationError
from common.ledger.driver_statements import DriverStatements

Clock = Callable[[], datetime]

_FINISHED = [s.value for s in JobState if s.finished]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class ClaimOutcome(str, enum.Enum):
    """What a claim attempt found. Only `claimed` lets the caller run the job."""

    claimed = "claimed"
    busy = "busy"  # running under someone's live lease: a duplicate delivery, do nothing
    finished = "finished"  # already succeeded/failed/cancelled/skipped: do nothing
    cancelled = "cancelled"  # cancel was requested before it started: now `cancelled`
    exhausted = "exhausted"  # out of attempts: now `failed` for good (dead letter)
    missing = "missing"  # no such job (deleted, or a message from another database)


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is ClaimOutcome.claimed


@dataclass(frozen=True)
class Heartbeat:
    """Result of a lease renewal: keep going only while `lease_held` and not `cancel_requested`."""

    lease_held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class ReapResult:
    requeued: list[str]  # running jobs whose lease expired, queued again: send their message again
    dead: list[str]  # expired and out of attempts: now `failed`
    resend: list[str]  # queued too long without a claim (message lost?): send their message again


class JobLedger:
    """Create, claim and finish jobs; all methods are safe to call from many processes at once."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utc_now):
        self._sessions = sessions
        self._clock = clock
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
        self._hot = _HotStatements(bind.dialect.name)
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

    def claim(self, job_id: str, owner: str, lease_seconds: float) -> Claim:
        """Take the job if it is queued, or running under an expired lease, and has attempts left."""
        now = self._clock()
        claimed = self._hot_statement(
            "claim",
            {"job_id": job_id, "owner": owner, "now": now, "expires": now + timedelta(seconds=lease_seconds)},
        )
        if claimed is not None:
            return Claim(ClaimOutcome.claimed, Job(**claimed))
        return self._explain_refusal(job_id, now)

    def _explain_refusal(self, job_id: str, now: datetime) -> Claim:
        job = self.find(job_id)
        if job is None:
            return Claim(ClaimOutcome.missing)
        state = JobState(job.state)
        if state.finished:
            return Claim(ClaimOutcome.finished, job)
        expired = state is JobState.running and (_aware(job.lease_expires_at) or now) < now
        if state is JobState.running and not expired:
            return Claim(ClaimOutcome.busy, job)
        # Queued, or running under a dead lease, yet not claimable: cancelled or out of attempts.
        if job.cancel_requested:
            self._finish_unowned(job_id, JobState.cancelled, "cancelled before it could run")
            return Claim(ClaimOutcome.cancelled, self.get(job_id))
        reason = f"gave up after {job.attempts} attempts; last error: {job.error or 'worker lost (lease expired)'}"
        self._finish_unowned(job_id, JobState.failed, reason)
        return Claim(ClaimOutcome.exhausted, self.get(job_id))

    def _finish_unowned(self, job_id: str, state: JobState, error: str) -> None:
        """Close a job nobody holds a live lease on (queued, or its lease expired)."""
        now = self._clock()
        with session_scope(self._sessions) as session:
            session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    (Job.state == JobState.queued.value)
                    | ((Job.state == JobState.running.value) & (Job.lease_expires_at < now)),
                )
                .values(state=state.value, error=error, lease_owner=None, lease_expires_at=None,
                        finished_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )

    def heartbeat(
        self, job_id: str, owner: str, lease_seconds: float, progress: dict[str, Any] | None = None
    ) -> Heartbeat:
        """Extend the lease (and record progress); tells whether we still hold it and if cancel was asked."""
        now = self._clock()
        values: dict[str, Any] = dict(
            lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now, updated_at=now
        )
        if progress is not None:
            values["progress"] = progress
        row = self._one_statement(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
            .values(**values)
            .returning(Job.cancel_requested)
        )
        if row is None:  # lease lost; still tell whether a cancel was asked for
            with session_scope(self._sessions) as session:
                cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
            return Heartbeat(lease_held=False, cancel_requested=bool(cancel))
        return Heartbeat(lease_held=True, cancel_requested=bool(row.cancel_requested))

    def _transition(self, job_id: str, owner: str, **values: Any) -> bool:
        """Leave `running`, only if `owner` still holds the lease. Returns whether it did."""
        now = self._clock()
        values.setdefault("updated_at", now)
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
        return bool(self._one_statement(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
            .values(**values)
        ))

    def succeed(self, job_id: str, owner: str, result: dict[str, Any] | None = None,
                state: JobState = JobState.succeeded) -> bool:
        """Record success (or `skipped`, a success that decided there was nothing to do)."""
        return bool(self._hot_statement(
            "finish",
            {"job_id": job_id, "owner": owner, "new_state": state.value, "result": result or {}, "now": self._clock()},
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
        self._transition(job_id, owner, state=JobState.failed.value, error=reason, finished_at=self._clock())
        return JobState(self.get(job_id).state)

    def release(self, job_id: str, owner: str, reason: str) -> bool:
        """Hand the job back after a clean checkpoint (shutdown, soft time limit).

        A clean hand-back is not a failed try, so it gives the attempt back: a long job that is
        preempted many times is not dead-lettered for it. Crashes still count.
        """
        return self._transition(
            job_id, owner, state=JobState.queued.value, attempts=Job.attempts - 1, error=f"requeued: {reason}"
        )

    def mark_cancelled(self, job_id: str, owner: str, reason: str = "cancelled on request") -> bool:
        return self._transition(job_id, owner, state=JobState.cancelled.value, error=reason,
                                finished_at=self._clock())

    def request_cancel(self, job_id: str) -> JobState:
        """Ask a job to stop: a queued job is cancelled now, a running one at its next heartbeat."""
        now = self._clock()
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
        now = self._clock()
        with session_scope(self._sessions) as session:
            moved = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_([JobState.failed.value, JobState.cancelled.value]))
                .values(state=JobState.queued.value, cancel_requested=False,
                        max_attempts=Job.attempts + extra_attempts, finished_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
        job = self.get(job_id)
        if not moved:
            raise ValidationError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
        return job

    # ---------------------------------------------------------------- the reaper

    def reap(self, resend_after_seconds: float) -> ReapResult:
        """Requeue running jobs whose lease expired (or fail them when out of attempts), and list
        queued jobs nobody claimed for `resend_after_seconds` (their message may be lost).

        Each move is a conditional UPDATE, so two reapers at once never double-handle a job.
        """
        now = self._clock()
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
                    Job.updated_at < now - timedelta(seconds=resend_after_seconds),
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

    def _move_expired(self, job_id: str, target: JobState, note: str, now: datetime) -> bool:
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

    def _touch_queued(self, job_id: str, now: datetime, resend_after_seconds: float) -> bool:
        """Bump `updated_at` so only one reaper re-sends a stale job per period."""
        with session_scope(self._sessions) as session:
            return bool(
                session.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.state == JobState.queued.value,
                        Job.updated_at < now - timedelta(seconds=resend_after_seconds),
                    )
                    .values(updated_at=now)
                    .execution_options(synchronize_session=False)
                ).rowcount
            )

    def counts_by_state(self, job_ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(Job.state, func.count()).group_by(Job.state)
        if job_ids is not None:
            query = query.where(Job.id.in_(list(job_ids)))
        with session_scope(self._sessions) as session:
            return {state: count for state, count in session.execute(query)}


def _insert_ignoring_conflict(dialect: str, values: dict[str, Any]):
    """INSERT … ON CONFLICT (idempotency_key) DO NOTHING in the given dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two databases we support
        raise ValidationError(f"unsupported database dialect {dialect!r}: use PostgreSQL or SQLite")
    return insert(Job).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])


class _HotStatements:
    """The three statements every job runs (create, claim, succeed), built once with bind parameters:
    rebuilding a SQLAlchemy statement per call costs more CPU than the database round trip."""

    def __init__(self, dialect: str):
        jobs = Job.__table__
        c = jobs.c
        names = ("id", "kind", "params", "queue", "state", "attempts", "max_attempts", "cancel_requested",
                 "idempotency_key", "pipeline_run_id", "created_at", "updated_at")
        self.create = _insert_ignoring_conflict(
            dialect, {name: bindparam(name, type_=c[name].type) for name in names}
        ).returning(c.id)
        now = bindparam("now", type_=c.updated_at.type)
        self.claim = (
            update(jobs)
            .where(
                c.id == bindparam("job_id"),
                c.cancel_requested.is_(False),
                c.attempts < c.max_attempts,
                (c.state == JobState.queued.value)
                | ((c.state == JobState.running.value) & (c.lease_expires_at < now)),
            )
            .values(
                state=JobState.running.value,
                attempts=c.attempts + 1,
                lease_owner=bindparam("owner"),
                lease_expires_at=bindparam("expires", type_=c.lease_expires_at.type),
                heartbeat_at=now,
                started_at=func.coalesce(c.started_at, now),
                updated_at=now,
            )
            .returning(*c)
        )
        self.finish = (
            update(jobs)
            .where(c.id == bindparam("job_id"), c.lease_owner == bindparam("owner"),
                   c.state == JobState.running.value)
            .values(state=bindparam("new_state"), result=bindparam("result", type_=c.result.type), error=None,
                    lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now)
        )


def is_finished(state: str) -> bool:
    return state in _FINISHED

