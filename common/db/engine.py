"""Engine and session helpers. Nothing is created at import time: callers pass their Settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import DatabaseUnavailable


def create_db_engine(url: str, **kwargs) -> Engine:
    """An engine for `url`; SQLite gets WAL + a busy timeout so a worker and the CLI can share it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from common.home import ensure_private_dir, ensure_private_file

            # The embedded database holds every feedback row: owner-only folder and file.
            ensure_private_dir(Path(parsed.database).parent)
            ensure_private_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI callback signature
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # pool_pre_ping: a worker that idled through a Postgres restart gets a fresh connection.
    return create_engine(url, pool_pre_ping=True, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error; connection errors become retryable."""
    session = factory()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DatabaseUnavailable(
            f"database unreachable or busy ({exc.orig.__class__.__name__}): check CONTINUUM_DATABASE_URL and that the server is up"
        ) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
