"""Embedded mode has no beat: the embedded worker runs the sweep itself (issue 9), and the CLI can
cancel a run. Real `python -m scheduler` processes on a fresh embedded home, nothing simulated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.distributed.harness import REPO, wait_for

FAST = {"CONTINUUM_REAPER_INTERVAL_SECONDS": "1", "CONTINUUM_PIPELINE_RECONCILE_GRACE_SECONDS": "1"}


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, **FAST, "CONTINUUM_HOME": str(home)}


def _cli(home: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=home.parent, env=_env(home),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_the_embedded_worker_sweeps_a_run_whose_queued_step_was_cancelled(tmp_path):
    home = tmp_path / "home"
    run = _cli(home, "pipeline", "run", "--json")  # no worker yet: the export step stays queued
    job_id = run["steps"]["export"]["job_id"]
    subprocess.run([sys.executable, "-m", "scheduler", "jobs", "cancel", job_id], cwd=tmp_path, env=_env(home),
                   check=True, capture_output=True, timeout=120)
    assert _cli(home, "pipeline", "show", run["id"], "--json")["state"] == "running"  # nobody told the run
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "scheduler", "worker", "-Q", "io", "-n", "sweeper@local"],
                              cwd=tmp_path, env=_env(home), stdout=log, stderr=subprocess.STDOUT)
    try:
        status = wait_for(lambda: (s := _cli(home, "pipeline", "show", run["id"], "--json"))["state"] != "running"
                          and s, 90, "the embedded worker's sweep to end the run", interval=1.0)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()
    assert status["state"] == "cancelled" and status["error"].startswith("export:")


def test_pipeline_cancel_ends_a_running_run_and_cancels_its_queued_step(tmp_path):
    home = tmp_path / "home"
    run = _cli(home, "pipeline", "run", "--json")
    cancelled = _cli(home, "pipeline", "cancel", run["id"], "--json")
    assert cancelled == {"id": run["id"], "state": "cancelled", "job_id": run["steps"]["export"]["job_id"],
                         "job_state": "cancelled"}
    shown = _cli(home, "pipeline", "show", run["id"], "--json")
    assert shown["state"] == "cancelled" and shown["steps"]["export"]["state"] == "cancelled"
    again = subprocess.run([sys.executable, "-m", "scheduler", "pipeline", "cancel", run["id"]], cwd=tmp_path,
                           env=_env(home), capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "only a running run can be cancelled" in again.stderr
