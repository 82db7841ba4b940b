"""Run Alembic migrations from code (`continuum db upgrade`, tests, embedded start-up).

Migrations run under a lock, so concurrent first use of a database (three commands started at once
on a fresh embedded home) runs them once: the others wait, then find the schema at head. SQLite: an
exclusive `fcntl` lock on `<database>.migrate.lock` beside the file; Postgres: a session-level
`pg_advisory_lock`, held on its own connection for the whole upgrade.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from common.errors import DatabaseUnavailable

# migrations/ sits beside the packages at the repository root (the guide's layout).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# An arbitrary constant: the advisory-lock key every continuum process agrees on ("cntnmigr").
_PG_LOCK_KEY = 0x636E746E6D696772


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Hold the database's migration lock (blocks until no other process holds it)."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:":
        from common.home import ensure_private_dir

        path = Path(url.database)
        ensure_private_dir(path.parent)
        fd = os.open(f"{path}.migrate.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
            yield
        finally:
            os.close(fd)
        return
    if backend == "postgresql":
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
        finally:
            engine.dispose()
        return
    yield  # an in-memory database belongs to one process


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` up to `revision` (default: the newest); safe to repeat
    and to run from several processes at once."""
    try:
        with migration_lock(database_url):
            command.upgrade(alembic_config(database_url), revision)
    except OperationalError as exc:
        where = make_url(database_url).render_as_string(hide_password=True)
        reason = " ".join(str(exc.orig if exc.orig is not None else exc).split())  # driver messages span lines
        raise DatabaseUnavailable(
            f"cannot migrate {where} ({reason}): check CONTINUUM_DATABASE_URL and that the server is up"
        ) from exc
