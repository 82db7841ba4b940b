"""Embedded mode, no servers: `continuum pipeline run --wait` starts a real worker on the embedded
(SQLite) broker for its duration, runs the pipeline through it, and stops it afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Worker
from tests.integration.distributed.harness import REPO, pid_alive

pytestmark = pytest.mark.slow


def test_pipeline_run_wait_starts_an_embedded_worker_and_skips_on_too_few_rows(tmp_path):
    from common.db.migrate import upgrade
    from common.feedback.importer import record_feedback_rows
    from common.settings import load_settings
    from workers.resources import resources_for

    settings = load_settings()
    upgrade(settings.resolved_database_url)
    resources = resources_for(settings)
    rows = [{"prompt": f"q{i}?", "response": f"a{i}", "feedback": "thumbs_up"} for i in range(3)]
    record_feedback_rows(resources.sessions, settings, rows)

    result = subprocess.run([sys.executable, "-c", "from scheduler.cli import main; main()", "pipeline", "run",
                             "--wait", "--json", "--timeout", "240"], cwd=REPO, env=dict(os.environ),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["state"] == "skipped" and status["steps"]["export"]["state"] == "skipped"
    with session_scope(resources.sessions) as session:
        workers = session.scalars(select(Worker)).all()
    assert len(workers) == 1 and workers[0].name.startswith("embedded-")
    assert not pid_alive(workers[0].pid)  # stopped when the command ended
    resources.close()
