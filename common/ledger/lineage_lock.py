"""The lineage lock: a batch cycle and the online learner never write one lineage at the same time.

Both write a lineage's future: a train job publishes the next version from production, the online
learner applies chat turns to its online state (and publishes versions from it). Interleaved, each
would build on a state the other is changing. So each holds `lineage_locks(<lineage>)` while it works:
taken by one compare-and-set UPDATE (free, expired, or already its own), renewed while it works, and
given back at the end. Times are the database's (`dbclock`), so machine clocks do not matter; a holder
that died frees the lineage when its expiry passes. A job that finds the lineage taken waits for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import LineageLock
from common.errors import RetryableError
from common.ledger.dbclock import db_now, seconds_from_now


def try_acquire(sessions: sessionmaker[Session], lineage: str, holder: str, ttl_seconds: float) -> bool:
    """Take (or renew) the lock if it is free, expired or ours; True when we hold it now."""
    for _ in range(2):
        with session_scope(sessions) as session:
            taken = session.execute(
                update(LineageLock)
                .where(LineageLock.lineage == lineage,
                       or_(LineageLock.holder.is_(None), LineageLock.holder == holder,
                           LineageLock.expires_at < db_now()))
                .values(holder=holder, expires_at=seconds_from_now(ttl_seconds))
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken:
                return True
            if session.scalar(select(LineageLock.lineage).where(LineageLock.lineage == lineage)) is not None:
                return False
        try:  # first use of this lineage: create the row, then take it by the same UPDATE
            with session_scope(sessions) as session:
                session.add(LineageLock(lineage=lineage, holder=None, expires_at=None))
        except IntegrityError:
            pass  # another process created it first
    return False


def release(sessions: sessionmaker[Session], lineage: str, holder: str) -> None:
    with session_scope(sessions) as session:
        session.execute(update(LineageLock).where(LineageLock.lineage == lineage, LineageLock.holder == holder)
                        .values(holder=None, expires_at=None).execution_options(synchronize_session=False))


def holder_of(sessions: sessionmaker[Session], lineage: str) -> str | None:
    """The live holder, or None (an expired hold counts as free)."""
    with session_scope(sessions) as session:
        row = session.execute(select(LineageLock.holder, LineageLock.expires_at >= db_now())
                              .where(LineageLock.lineage == lineage)).first()
        return row[0] if row is not None and row[1] else None


@contextmanager
def lineage_lock(sessions: sessionmaker[Session], lineage: str, holder: str, ttl_seconds: float = 300,
                 wait_seconds: float = 600, poll_seconds: float = 1.0,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[Callable[[], None]]:
    """Hold the lineage while the block runs; yields `renew()` (call it more often than the TTL).

    Waits up to `wait_seconds` for another holder, then raises RetryableError naming it.
    """
    deadline = time.monotonic() + wait_seconds
    while not try_acquire(sessions, lineage, holder, ttl_seconds):
        if time.monotonic() > deadline or (should_stop is not None and should_stop()):
            raise RetryableError(f"lineage {lineage!r} is busy (held by {holder_of(sessions, lineage)}): "
                                 f"the job is retried once it is free")
        time.sleep(poll_seconds)

    def renew() -> None:
        if not try_acquire(sessions, lineage, holder, ttl_seconds):
            raise RetryableError(f"lost the lock of lineage {lineage!r} (expired and taken): retry the job")

    try:
        yield renew
    finally:
        release(sessions, lineage, holder)
