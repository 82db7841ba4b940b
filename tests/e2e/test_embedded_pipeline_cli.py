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
from tests.integration.distributed.harness import REPO

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

    def pipeline_run_wait() -> dict:
        result = subprocess.run([sys.executable, "-c", "from scheduler.cli import main; main()", "pipeline", "run",
                                 "--wait", "--json", "--timeout", "90"], cwd=REPO, env=dict(os.environ),
                                capture_output=True, text=True, timeout=150)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout[result.stdout.index("{"):])

    status = pipeline_run_wait()
    assert status["state"] == "skipped" and status["steps"]["export"]["state"] == "skipped"
    with session_scope(resources.sessions) as session:
        assert session.scalars(select(Worker)).all() == []  # the stopped worker deregistered itself
    # Right after, a second command must start its own worker: a stopped worker whose heartbeat is
    # still fresh must not count as live (before the fix this run waited forever on a queued job).
    again = pipeline_run_wait()
    assert again["state"] == "skipped" and again["id"] != status["id"]
    with session_scope(resources.sessions) as session:
        assert session.scalars(select(Worker)).all() == []
    # For a person (no --json, 80 columns): why it skipped, and the steps it never reached say so.
    human = subprocess.run([sys.executable, "-m", "scheduler", "pipeline", "run", "--wait", "--timeout", "90"],
                           cwd=REPO, env=dict(os.environ, COLUMNS="80"), capture_output=True, text=True, timeout=150)
    assert human.returncode == 0, human.stdout + human.stderr
    words = " ".join(human.stdout.split())  # rich wraps the sentence at 80 columns
    assert "skipped — export skipped: 3 new feedback rows, fewer than the 8 a cycle needs; no adapter trained" in words
    assert human.stdout.count("not run") == 4 and "waiting" not in human.stdout  # fisher … promote
    assert max(len(line) for line in human.stdout.splitlines()) <= 80
    resources.close()
