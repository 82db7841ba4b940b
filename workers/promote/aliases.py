"""Aliases (`production`) move only by compare-and-set on their `revision`, and every attempt — won,
lost or refused — is appended to `alias_history`. Two promotions racing: exactly one wins."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Adapter, Alias, AliasHistory
from common.errors import NotFound, ValidationError
from common.ledger import utc_now


@dataclass(frozen=True)
class AliasState:
    name: str
    adapter_id: int | None
    revision: int


@dataclass(frozen=True)
class MoveResult:
    succeeded: bool
    from_adapter_id: int | None
    to_adapter_id: int | None
    revision: int
    reason: str


def read_alias(sessions: sessionmaker[Session], name: str) -> AliasState:
    """The alias as it is now; an alias that never pointed anywhere reads as (None, revision 0)."""
    with session_scope(sessions) as session:
        row = session.get(Alias, name)
        return AliasState(name, row.adapter_id, row.revision) if row else AliasState(name, None, 0)


def _ensure_row(session: Session, name: str) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(
        insert(Alias).values(name=name, adapter_id=None, revision=0, updated_at=utc_now())
        .on_conflict_do_nothing(index_elements=["name"])
    )


def record_attempt(session: Session, alias: str, action: str, from_id: int | None, to_id: int | None,
                   succeeded: bool, reason: str, job_id: str | None) -> None:
    session.add(AliasHistory(alias=alias, action=action, from_adapter_id=from_id, to_adapter_id=to_id,
                             succeeded=succeeded, reason=reason, job_id=job_id, created_at=utc_now()))


def move_alias(
    sessions: sessionmaker[Session],
    name: str,
    to_adapter_id: int,
    expected_revision: int,
    *,
    action: str = "promote",
    reason: str = "",
    job_id: str | None = None,
    on_moved: Callable[[Session], None] | None = None,
) -> MoveResult:
    """Point `name` at `to_adapter_id` if its revision is still `expected_revision`.

    The UPDATE's WHERE clause is the compare-and-set: a concurrent mover that committed first bumped
    the revision, so this one updates nothing and records a lost attempt instead. `on_moved(session)`
    runs in the SAME transaction as a successful move (promote sets the adapter's status and fences
    the write on its lease there): the alias and the status change together or not at all.
    """
    with session_scope(sessions) as session:
        if session.get(Adapter, to_adapter_id) is None:
            raise NotFound(f"no adapter with id {to_adapter_id}: list them with `continuum adapters list`")
        _ensure_row(session, name)
    with session_scope(sessions) as session:
        now = utc_now()
        current = session.execute(select(Alias.adapter_id, Alias.revision).where(Alias.name == name)).one()
        moved = session.execute(
            update(Alias)
            .where(Alias.name == name, Alias.revision == expected_revision)
            .values(adapter_id=to_adapter_id, revision=Alias.revision + 1, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved:
            record_attempt(session, name, action, current.adapter_id, to_adapter_id, True, reason or "moved", job_id)
            if on_moved is not None:
                on_moved(session)
            return MoveResult(True, current.adapter_id, to_adapter_id, expected_revision + 1, reason or "moved")
    # Lost the race (or a stale expectation): record it in its own transaction, after the winner's.
    state = read_alias(sessions, name)
    lost = (f"compare-and-set lost: expected revision {expected_revision}, alias is at revision "
            f"{state.revision} (adapter {state.adapter_id})")
    with session_scope(sessions) as session:
        record_attempt(session, name, action, state.adapter_id, to_adapter_id, False, lost, job_id)
    return MoveResult(False, state.adapter_id, to_adapter_id, state.revision, lost)


def rollback_target(sessions: sessionmaker[Session], name: str) -> int:
    """The adapter the alias pointed at before its current one (from the history of successful moves)."""
    state = read_alias(sessions, name)
    with session_scope(sessions) as session:
        previous = session.scalar(
            select(AliasHistory.from_adapter_id)
            .where(AliasHistory.alias == name, AliasHistory.succeeded.is_(True),
                   AliasHistory.to_adapter_id == state.adapter_id, AliasHistory.from_adapter_id.is_not(None))
            .order_by(AliasHistory.id.desc())
            .limit(1)
        )
    if previous is None:
        raise ValidationError(f"alias {name!r} has no earlier adapter to roll back to: use --to <adapter id>")
    return previous


def rollback(sessions: sessionmaker[Session], name: str, to_adapter_id: int | None = None,
             reason: str = "rollback") -> MoveResult:
    """Move `name` back to its previous adapter (or `to_adapter_id`), by compare-and-set."""
    state = read_alias(sessions, name)
    target = to_adapter_id if to_adapter_id is not None else rollback_target(sessions, name)
    moved = move_alias(sessions, name, target, state.revision, action="rollback", reason=reason)
    if moved.succeeded and moved.from_adapter_id is not None and moved.from_adapter_id != target:
        # The version rolled away from no longer serves: listing it as "promoted" would say it does.
        with session_scope(sessions) as session:
            session.execute(update(Adapter).where(Adapter.id == moved.from_adapter_id, Adapter.status == "promoted")
                            .values(status="rolled_back"))
    return moved
