"""Migrations are code: `alembic upgrade head` on an empty database must give exactly the models' schema.

Run on both databases continuum supports (SQLite embedded, Postgres distributed), then compared with
Alembic's autogenerate `compare_metadata`: any difference means a model changed without a migration
(or the reverse), and the test prints what differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from common.db.engine import create_db_engine
from common.db.migrate import alembic_config, upgrade
from common.db.models import Base

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def _head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _schema_differences(url: str) -> list:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _current_revision(url: str) -> str | None:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_there_is_exactly_one_head():
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migration history has branched: {heads}"


def test_upgrade_head_on_an_empty_database_matches_the_models(empty_database_url):
    assert _table_names(empty_database_url) == set()
    upgrade(empty_database_url)
    assert _current_revision(empty_database_url) == _head()
    expected = set(Base.metadata.tables)
    assert expected <= _table_names(empty_database_url)
    differences = _schema_differences(empty_database_url)
    assert differences == [], "models and migrations disagree:\n" + "\n".join(map(str, differences))


def test_unclaimed_feedback_index_is_partial(empty_database_url):
    # compare_metadata does not compare WHERE clauses, so check the export's partial index directly.
    upgrade(empty_database_url)
    engine = create_db_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                sql = conn.execute(
                    sa.text("select indexdef from pg_indexes where indexname = 'ix_feedback_unclaimed'")
                ).scalar_one()
            else:
                sql = conn.execute(
                    sa.text("select sql from sqlite_master where type = 'index' and name = 'ix_feedback_unclaimed'")
                ).scalar_one()
    finally:
        engine.dispose()
    assert "dataset_id IS NULL" in sql, sql


def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(empty_database_url):
    from alembic import command

    upgrade(empty_database_url)
    command.downgrade(alembic_config(empty_database_url), "base")
    assert _table_names(empty_database_url) - {"alembic_version"} == set()
    upgrade(empty_database_url)
    assert _schema_differences(empty_database_url) == []


def test_feedback_stored_before_0004_counts_as_seen_after_it(empty_database_url, tmp_path):
    """The upgrade backfills feedback_content, so importing old feedback again is a duplicate."""
    from alembic import command

    from common.db import session_factory
    from common.feedback import record_feedback_rows
    from common.settings import load_settings

    command.upgrade(alembic_config(empty_database_url), "0003")
    engine = create_db_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO feedback (prompt, response, feedback, content_hash, created_at, received_at) "
            "VALUES ('q?', 'a', 'thumbs_up', :h, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
            {"h": _hash_of("q?", "a", "thumbs_up")})
    upgrade(empty_database_url)
    summary = record_feedback_rows(session_factory(engine), load_settings(),
                                   [{"prompt": "q?", "response": "a", "feedback": "thumbs_up"}])
    engine.dispose()
    assert (summary.inserted, summary.duplicate) == (0, 1)


def _hash_of(prompt: str, response: str, feedback: str) -> str:
    from common.feedback.schema import content_hash

    return content_hash(prompt, response, feedback)


def _cli(args: list[str], database_url: str, home: Path, console_script: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(CONTINUUM_DATABASE_URL=database_url, CONTINUUM_HOME=str(home))
    script = Path(sys.executable).with_name("continuum")
    command = [str(script)] if console_script and script.exists() else [sys.executable, "-m", "scheduler"]
    return subprocess.run(
        [*command, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_db_upgrade_is_idempotent(empty_database_url, tmp_path):
    # First through the installed console script (when installed), then again through `python -m`.
    for console_script in (True, False):
        result = _cli(["db", "upgrade"], empty_database_url, tmp_path / "home", console_script)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "head" in result.stdout
        assert _current_revision(empty_database_url) == _head()
    assert _schema_differences(empty_database_url) == []


def test_cli_db_upgrade_reports_an_unreachable_database_in_one_line(tmp_path):
    from tests.support.servers import free_port

    url = f"postgresql+psycopg://continuum:hunter2-password@127.0.0.1:{free_port()}/nothing"
    result = _cli(["db", "upgrade"], url, tmp_path / "home", console_script=False)
    output = " ".join((result.stdout + result.stderr).split())  # Rich wraps long lines
    assert result.returncode == 1
    assert "Traceback" not in output
    assert "check CONTINUUM_DATABASE_URL" in output
    assert "hunter2-password" not in output  # the password is never echoed
