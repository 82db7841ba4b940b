"""The online learner's rows in the database: chat turns waiting to be learnt, and the fact memory."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Adapter, FactMemory, Job, OnlineTurn
from common.online.memory import Fact, MemoryChange

_FACT_FIELDS = ("text", "relation", "subject", "object", "entities", "confidence", "times_seen", "first_turn",
                "last_turn", "importance")


def add_turn(sessions: sessionmaker[Session], lineage: str, messages: list[dict[str, str]], response: str,
             response_id: str | None = None) -> int:
    """Queue a served turn for its lineage's online learner; returns its id (the order it is learnt in)."""
    with session_scope(sessions) as session:
        row = OnlineTurn(lineage=lineage, messages=messages, response=response, response_id=response_id)
        session.add(row)
        session.flush()
        return row.id


def pending_turns(session: Session, lineage: str, limit: int = 1000) -> list[OnlineTurn]:
    return list(session.scalars(select(OnlineTurn).where(OnlineTurn.lineage == lineage,
                                                         OnlineTurn.applied_at.is_(None))
                                .order_by(OnlineTurn.id).limit(limit)))


def turns_learnt(session: Session, lineage: str) -> int:
    """How many turns this lineage's online learner has applied (the turn clock of the fact memory)."""
    return int(session.scalar(select(func.max(OnlineTurn.turn_number)).where(OnlineTurn.lineage == lineage)) or 0)


def mark_applied(session: Session, turn: OnlineTurn, number: int, kind: str, result: dict[str, Any]) -> None:
    turn.applied_at = datetime.now(timezone.utc)
    turn.turn_number = number
    turn.kind = kind
    turn.result = result


def load_memory(session: Session, lineage: str) -> dict[str, Fact]:
    rows = session.scalars(select(FactMemory).where(FactMemory.lineage == lineage))
    return {r.key: Fact(r.key, r.text, r.relation, r.subject, r.object, list(r.entities), r.confidence,
                        r.times_seen, r.first_turn, r.last_turn, r.importance) for r in rows}


def save_change(session: Session, lineage: str, change: MemoryChange) -> None:
    """Write what `memory.observe` changed: upsert the touched facts, delete the removed ones."""
    if change.removed:
        session.execute(delete(FactMemory).where(FactMemory.lineage == lineage, FactMemory.key.in_(change.removed)))
    if not change.touched:
        return
    existing = {r.key: r for r in session.scalars(select(FactMemory).where(
        FactMemory.lineage == lineage, FactMemory.key.in_([f.key for f in change.touched])))}
    now = datetime.now(timezone.utc)
    for fact in change.touched:
        row = existing.get(fact.key) or FactMemory(lineage=lineage, key=fact.key)
        for name in _FACT_FIELDS:
            setattr(row, name, getattr(fact, name))
        row.updated_at = now
        session.add(row)


def list_facts(sessions: sessionmaker[Session], lineage: str, limit: int = 100) -> list[dict[str, Any]]:
    """The lineage's facts, most important first (what `continuum chat`'s /facts shows)."""
    with session_scope(sessions) as session:
        rows = session.scalars(select(FactMemory).where(FactMemory.lineage == lineage)
                               .order_by(FactMemory.importance.desc(), FactMemory.last_turn.desc()).limit(limit))
        return [{"text": r.text, "relation": r.relation, "subject": r.subject, "object": r.object,
                 "entities": r.entities, "times_seen": r.times_seen, "last_turn": r.last_turn,
                 "importance": r.importance} for r in rows]


def lineages_maybe_unpublished(session: Session) -> list[str]:
    """Lineages with a turn learnt after their newest version was made: their online state may hold
    updates no version has yet (the online job decides exactly, from its checkpoint)."""
    learnt = session.execute(select(OnlineTurn.lineage, func.max(OnlineTurn.applied_at))
                             .where(OnlineTurn.applied_at.is_not(None)).group_by(OnlineTurn.lineage)).all()
    found = []
    for lineage, last_learnt in learnt:
        newest = session.scalar(select(func.max(Adapter.created_at)).where(Adapter.name == lineage))
        if newest is None or _naive(newest) < _naive(last_learnt):
            found.append(lineage)
    return found


def _naive(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; every one was written as UTC.
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo is not None else value


def online_status(sessions: sessionmaker[Session], lineage: str, look_back: int = 200) -> dict[str, Any] | None:
    """Where the lineage's online learner stands: the last online job that applied turns (its
    stability, plasticity and forgetting figures), turns waiting, and the last version it published."""
    with session_scope(sessions) as session:
        waiting = int(session.scalar(select(func.count()).select_from(OnlineTurn).where(
            OnlineTurn.lineage == lineage, OnlineTurn.applied_at.is_(None))) or 0)
        jobs = session.scalars(select(Job).where(Job.kind == "online", Job.state == "succeeded")
                               .order_by(Job.finished_at.desc()).limit(look_back)).all()
        results = [j.result for j in jobs if isinstance(j.result, dict) and j.result.get("lineage") == lineage
                   and j.result.get("status") == "applied"]
    if not results and not waiting:
        return None
    last = results[0] if results else {}
    published = next((r["published"] for r in results if isinstance(r.get("published"), dict)), None)
    return {"turns_learnt": last.get("turn_clock", 0), "turns_waiting": waiting, "facts": last.get("facts", 0),
            "unpublished_updates": last.get("unpublished_updates"), "metrics": last.get("metrics", {}),
            "last_published": {k: published[k] for k in ("version", "reason") if k in published} if published else None}
