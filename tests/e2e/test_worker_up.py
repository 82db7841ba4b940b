"""`continuum up` starts one background worker that later commands reuse; `continuum down` stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.distributed.harness import REPO


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=180)


def _workers() -> list:
    from sqlalchemy import select

    from common.db import create_db_engine, session_factory, session_scope
    from common.db.models import Worker
    from common.settings import load_settings

    engine = create_db_engine(load_settings().resolved_database_url)
    with session_scope(session_factory(engine)) as session:
        rows = [(w.name, w.pid) for w in session.scalars(select(Worker))]
    engine.dispose()
    return rows


def test_up_is_reused_by_commands_and_down_stops_it():
    up = _cli("up", "--json")
    assert up.returncode == 0, up.stderr
    started = json.loads(up.stdout)
    try:
        assert started["started"] is True
        assert json.loads(_cli("up", "--json").stdout) == {"pid": started["pid"], "started": False}
        skipped = _cli("export", "--json")  # a job through the queue: run by the worker that is up
        assert skipped.returncode == 0 and json.loads(skipped.stdout)["status"] == "skipped", skipped.stderr
        assert [pid for _, pid in _workers()] == [started["pid"]]  # no second worker was started
    finally:
        down = _cli("down", "--json")
    assert down.returncode == 0 and json.loads(down.stdout) == {"pid": started["pid"], "stopped": True}
    assert _workers() == []  # the stopped worker deregistered itself
    assert json.loads(_cli("down", "--json").stdout)["stopped"] is False
