"""Every pipeline run ends (issue 9): stalled runs are advanced or ended by the reconciliation sweep
that a real `continuum beat` process runs — the test never calls the sweep itself.

Real Postgres, Redis, S3 (moto), worker and beat processes. Each case fails on the code before
issue 9: nothing moved a run whose step was cancelled while queued, or whose enqueue was lost in a
crash, so it stayed `running` forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from scheduler.pipeline import pipeline_status, start_pipeline
from tests.integration.distributed.harness import REPO, wait_for
from workers.celery_app import app_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The sweep every second, a lost enqueue noticed after 2 s; a schedule that never fires during a test.
SWEEP_ENV = {
    "CONTINUUM_REAPER_INTERVAL_SECONDS": "1",
    "CONTINUUM_PIPELINE_RECONCILE_GRACE_SECONDS": "2",
    "CONTINUUM_PIPELINE_SCHEDULE": "0 0 1 1 *",
}
# A run that ends fast without training: the train step names a dataset that does not exist.
FAST_FAIL = {"device": "cpu", "steps": {"train": {"dataset_id": 987654}}}


@pytest.fixture
def sweep_env(monkeypatch):
    for key, value in SWEEP_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def beat(sweep_env, tmp_path):
    """A real `continuum beat` (it runs the sweep); the test only watches the database."""
    log = open(tmp_path / "beat.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from scheduler.cli import main; main()", "beat"], cwd=REPO,
                            env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _feedback(dist_settings, resources, n: int) -> None:
    from common.feedback.importer import record_feedback_rows

    rows = [{"prompt": f"What is the code word {i}?", "response": f"word-{i}", "feedback": "thumbs_up", "id": f"f{i}"}
            for i in range(n)]
    assert record_feedback_rows(resources.sessions, dist_settings, rows).inserted == n


def _ended(settings, run_id: str, timeout: float) -> dict:
    return wait_for(lambda: (s := pipeline_status(settings, run_id))["state"] != "running" and s, timeout,
                    f"pipeline run {run_id} to end")


def test_cancelling_a_queued_step_ends_the_run(dist_settings, resources, beat):
    # No worker: the export step stays queued, then an operator cancels that job (`continuum jobs cancel`).
    run, _ = start_pipeline(dist_settings, app_for(dist_settings))
    job_id = pipeline_status(dist_settings, run.id)["steps"]["export"]["job_id"]
    assert resources.ledger.request_cancel(job_id).value == "cancelled"
    status = _ended(dist_settings, run.id, 30)
    assert status["state"] == "cancelled" and status["error"].startswith("export:")


def _crash_env(point: str) -> dict[str, str]:
    import json

    return dict(os.environ, CONTINUUM_TEST_PIPELINE_CRASH_AT=point,
                CONTINUUM_TEST_PIPELINE_PARAMS=json.dumps(FAST_FAIL))


def _only_run(resources) -> str:
    from sqlalchemy import select

    from common.db.engine import session_scope
    from common.db.models import PipelineRun

    with session_scope(resources.sessions) as session:
        [run_id] = session.scalars(select(PipelineRun.id)).all()
    return run_id


def test_a_crash_between_run_insert_and_first_enqueue_still_ends_the_run(dist_settings, resources, beat,
                                                                         start_worker):
    start_worker("pipe")
    _feedback(dist_settings, resources, 10)
    crashed = subprocess.run([sys.executable, "-m", "tests.integration.distributed.pipeline_crash_app", "start"],
                             cwd=REPO, env=_crash_env("after_insert"), capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    run_id = _only_run(resources)
    assert pipeline_status(dist_settings, run_id)["steps"] == {}  # the run exists, no step was ever sent
    status = _ended(dist_settings, run_id, 120)
    assert status["state"] == "failed" and status["current_step"] == "train" and "987654" in status["error"]
    assert status["steps"]["export"]["state"] == "succeeded"


def test_a_crash_between_a_steps_compare_and_set_and_its_enqueue_still_ends_the_run(dist_settings, resources,
                                                                                    beat, start_worker,
                                                                                    monkeypatch):
    _feedback(dist_settings, resources, 10)
    monkeypatch.setenv("CONTINUUM_TEST_PIPELINE_CRASH_AT", "after_cas")  # only the crashing worker reads it
    crashing = start_worker("crashing", queues="io", app_module="tests.integration.distributed.pipeline_crash_app")
    monkeypatch.delenv("CONTINUUM_TEST_PIPELINE_CRASH_AT")
    run, _ = start_pipeline(dist_settings, app_for(dist_settings), params=FAST_FAIL)
    assert crashing.wait_exit(120) == -signal.SIGKILL, crashing.text()[-3000:]
    stalled = pipeline_status(dist_settings, run.id)
    assert stalled["state"] == "running" and stalled["current_step"] == "fisher" and "fisher" not in stalled["steps"]
    start_worker("healthy")
    status = _ended(dist_settings, run.id, 120)
    assert status["state"] == "failed" and status["current_step"] == "train" and "987654" in status["error"]
    assert status["steps"]["fisher"]["state"] == "skipped"
