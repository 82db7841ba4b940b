"""Migrations run under a lock (issue 9): several processes migrating a fresh database at once all
succeed and the schema is built once. Real Postgres (advisory lock); SQLite is covered end to end by
tests/e2e/test_embedded_home.py (three CLI commands on a fresh home)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.integration.distributed.harness import REPO

pytestmark = [pytest.mark.integration]


def test_three_processes_migrating_a_fresh_postgres_database_all_succeed(postgres_url):
    code = "import sys; from common.db.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, postgres_url], cwd=REPO, env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(proc.wait(180), proc.stderr.read()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        from common.db.migrate import alembic_config
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config(postgres_url)).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    engine.dispose()
