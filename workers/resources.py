"""Per-process handles a worker needs: database sessions, the job ledger, the object store.

Built on first use in the process that uses them (never at import time, never inherited across a
fork: a forked pool child must not reuse its parent's database connections).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from common.ledger import JobLedger
from common.objectstore import ObjectStore, open_store
from common.settings import Settings


@dataclass
class Resources:
    settings: Settings

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        from common.db import create_db_engine, session_factory

        return session_factory(create_db_engine(self.settings.resolved_database_url))

    @cached_property
    def ledger(self) -> JobLedger:
        return JobLedger(self.sessions)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings)

    def close(self) -> None:
        """Dispose the connections this process opened (tests; long-lived processes never need it)."""
        if "ledger" in self.__dict__:
            self.ledger.close()
        if "sessions" in self.__dict__:
            self.sessions.kw["bind"].dispose()
        _cache.pop((os.getpid(), id(self.settings)), None)


_cache: dict[tuple[int, int], Resources] = {}


def resources_for(settings: Settings) -> Resources:
    """The Resources of this process for `settings` (one engine per process and settings object).

    Keyed by `id()` for speed (this runs once per job), but an id is only unique among LIVE objects:
    the entry is used only when it was built for this very object (`is`), so a new Settings that
    happens to reuse a dead one's id never gets the other database's engine.
    """
    key = (os.getpid(), id(settings))
    found = _cache.get(key)
    if found is None or found.settings is not settings:
        found = _cache[key] = Resources(settings)
    return found
