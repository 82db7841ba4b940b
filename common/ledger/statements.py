"""The ledger's hot statements (create, claim, finish), built once with bind parameters.

Rebuilding a SQLAlchemy statement per call costs more CPU than the database round trip; on Postgres the
same compiled SQL also runs straight on the driver (`driver_statements`). Lease times in them come from
the database's clock (`dbclock`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, bindparam, func, update

from common.db.models import Job, JobState
from common.errors import ValidationError
from common.ledger.dbclock import db_now, seconds_from_now


def _insert_ignoring_conflict(dialect: str, values: dict[str, Any]):
    """INSERT … ON CONFLICT (idempotency_key) DO NOTHING in the given dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two databases we support
        raise ValidationError(f"unsupported database dialect {dialect!r}: use PostgreSQL or SQLite")
    return insert(Job).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])


class HotStatements:
    """The three statements every job runs (create, claim, succeed), built once with bind parameters:
    rebuilding a SQLAlchemy statement per call costs more CPU than the database round trip."""

    def __init__(self, dialect: str):
        jobs = Job.__table__
        c = jobs.c
        names = ("id", "kind", "params", "queue", "state", "attempts", "max_attempts", "cancel_requested",
                 "idempotency_key", "pipeline_run_id", "created_at", "updated_at")
        binds = {name: bindparam(name, type_=c[name].type) for name in names}
        # Every other column with a constant Python default (lease_token, releases, …) gets it as a
        # fixed bind value: the driver path runs the compiled SQL without SQLAlchemy's default
        # processing, which would otherwise send NULL for them.
        for column in jobs.c:
            default = column.default
            if column.name not in binds and default is not None and getattr(default, "is_scalar", False):
                binds[column.name] = bindparam(column.name, value=default.arg, type_=column.type)
        self.create = _insert_ignoring_conflict(dialect, binds).returning(c.id)
        now = db_now()
        self.claim = (
            update(jobs)
            .where(
                c.id == bindparam("job_id"),
                # The task that claims must be the job's own kind, on the job's queue (NULL: not checked).
                # In the claim itself, so the check costs no extra round trip per job.
                c.kind == func.coalesce(bindparam("claim_kind", type_=c.kind.type), c.kind),
                c.queue == func.coalesce(bindparam("claim_queue", type_=c.queue.type), c.queue),
                c.cancel_requested.is_(False),
                c.attempts < c.max_attempts,
                (c.state == JobState.queued.value)
                | ((c.state == JobState.running.value) & (c.lease_expires_at < now)),
            )
            .values(
                state=JobState.running.value,
                attempts=c.attempts + 1,
                lease_owner=bindparam("owner"),
                lease_token=c.lease_token + 1,  # the fencing token of this claim
                lease_expires_at=seconds_from_now(bindparam("lease_seconds", type_=Float())),
                heartbeat_at=now,
                started_at=func.coalesce(c.started_at, now),
                updated_at=now,
            )
            .returning(*c)
        )
        self.finish = (
            update(jobs)
            .where(c.id == bindparam("job_id"), c.lease_owner == bindparam("owner"),
                   c.state == JobState.running.value, c.lease_expires_at > now, c.cancel_requested.is_(False))
            .values(state=bindparam("new_state"), result=bindparam("result", type_=c.result.type), error=None,
                    lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now)
        )
