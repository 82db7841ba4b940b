"""Run Alembic migrations from code (`continuum db upgrade`, tests, embedded start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from common.errors import DatabaseUnavailable

# migrations/ sits beside the packages at the repository root (the guide's layout).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` up to `revision` (default: the newest); safe to repeat."""
    try:
        command.upgrade(alembic_config(database_url), revision)
    except OperationalError as exc:
        where = make_url(database_url).render_as_string(hide_password=True)
        reason = " ".join(str(exc.orig if exc.orig is not None else exc).split())  # driver messages span lines
        raise DatabaseUnavailable(
            f"cannot migrate {where} ({reason}): check CONTINUUM_DATABASE_URL and that the server is up"
        ) from exc
