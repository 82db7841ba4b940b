"""A client that knows only Celery (no continuum import) sends jobs by task name and they run.

The client runs in its own interpreter whose code imports nothing but `celery`, so it stands in for a
producer written in another language: it sends `continuum.export` with the JSON payload the README
documents ("Sending jobs from other languages") to a real worker on Redis, Postgres and S3; Flower's
HTTP API then lists that task. (Flower's auth is tests/integration/distributed/test_flower.py; stock PEFT
loading of a published adapter is tests/unit/learning/test_adapter_publish.py.)
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from sqlalchemy import func, select

from common.db.engine import session_scope
from common.db.models import Dataset, Feedback, Job
from tests.integration.distributed.harness import REPO, wait_for
from tests.support.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Runs with `-I` (isolated: no cwd, no PYTHONPATH), so importing continuum would fail loudly.
_PLAIN_CLIENT = r"""
import json, sys
from celery import Celery

broker, messages = sys.argv[1], json.loads(sys.argv[2])
app = Celery(broker=broker)
app.conf.update(task_serializer="json", accept_content=["json"])
for message in messages:
    app.send_task(message["task"], kwargs=message["kwargs"], queue=message["queue"])
assert not any(name.split(".")[0] in {"common", "workers", "scheduler"} for name in sys.modules), sorted(sys.modules)
print("sent", len(messages))
"""


def _send_plain(broker_url: str, *messages: dict) -> None:
    result = subprocess.run([sys.executable, "-I", "-c", _PLAIN_CLIENT, broker_url, json.dumps(list(messages))],
                            cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent {len(messages)}"


def _feedback(settings, resources, n: int, start: int = 0) -> None:
    from common.feedback.importer import record_feedback_rows

    rows = [{"prompt": f"Interop question {i}?", "response": f"answer-{i}", "feedback": "thumbs_up", "id": f"i{i}"}
            for i in range(start, start + n)]
    assert record_feedback_rows(resources.sessions, settings, rows).inserted == n


def _job(resources, job_id: str) -> Job | None:
    return resources.ledger.find(job_id)


def _finished(resources, job_id: str, timeout: float = 60) -> Job:
    return wait_for(lambda: (job := _job(resources, job_id)) is not None and job.state not in {"queued", "running"}
                    and job, timeout, f"job {job_id} to finish")


def test_plain_celery_client_runs_export_by_name(dist_settings, resources, start_worker):
    worker = start_worker("interop", queues="io")
    _feedback(dist_settings, resources, 12)
    job_id = str(uuid.uuid4())
    message = {"task": "continuum.export", "queue": "io", "kwargs": {"job_id": job_id, "params": {"min_rows": 5}}}
    _send_plain(dist_settings.resolved_broker_url, message, message)  # a duplicate must not make a second job

    job = _finished(resources, job_id)
    assert job.state == "succeeded", job.error
    assert job.kind == "export" and job.params == {"min_rows": 5} and job.queue == "io" and job.attempts == 1
    with session_scope(resources.sessions) as session:
        dataset = session.scalars(select(Dataset)).one()
        assert dataset.job_id == job_id and dataset.num_rows == 12
        assert session.scalar(select(func.count()).where(Feedback.dataset_id == dataset.id)) == 12
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        uri, manifest_key = dataset.uri, dataset.manifest_key
    assert job.result["dataset_id"] == dataset.id
    assert resources.store.exists(manifest_key) and uri.startswith(dist_settings.resolved_storage_url)
    assert "Traceback" not in worker.text()


def test_idempotency_key_makes_one_job_and_bad_messages_fail_clearly(dist_settings, resources, start_worker):
    worker = start_worker("interop", queues="io")
    _feedback(dist_settings, resources, 6)
    keyed = {"task": "continuum.export", "queue": "io",
             "kwargs": {"params": {"min_rows": 1}, "idempotency_key": "nightly-2030-01-01"}}
    bad = [
        {"task": "continuum.export", "queue": "io", "kwargs": {"job_id": "not-a-uuid", "params": {}}},
        {"task": "continuum.export", "queue": "io", "kwargs": {"params": [1, 2], "idempotency_key": "k2"}},
        {"task": "continuum.export", "queue": "io", "kwargs": {"params": {}, "priority_please": True}},
    ]
    _send_plain(dist_settings.resolved_broker_url, *bad, keyed, keyed)

    def keyed_job() -> Job | None:
        with session_scope(resources.sessions) as session:
            return session.scalars(select(Job).where(Job.idempotency_key == "nightly-2030-01-01")).one_or_none()

    job = _finished(resources, wait_for(keyed_job, 60, "the keyed job row").id)
    assert job.state == "succeeded" and job.result["rows"] == 6
    wait_for(lambda: worker.text().count("bad continuum.export message") >= 3, 30, "the bad messages to be rejected")
    log = worker.text()
    assert "job_id must be a UUID string" in log and "params must be a JSON object" in log
    assert "unknown message field 'priority_please'" in log
    with session_scope(resources.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # bad messages wrote nothing

    # A bad *value* inside params is the job's own validation: the row fails with the reason, no retry.
    job_id = str(uuid.uuid4())
    _send_plain(dist_settings.resolved_broker_url,
                {"task": "continuum.export", "queue": "io", "kwargs": {"job_id": job_id, "params": {"min_rows": "many"}}})
    failed = _finished(resources, job_id)
    assert failed.state == "failed" and "min_rows" in failed.error and failed.attempts == 1


def test_plain_message_for_a_device_job_lands_on_its_queue(dist_settings, resources, start_worker):
    """The diagnostic `sleep` (a subprocess job) stands in for ML kinds: the row records the queue the message came on."""
    start_worker("interop", queues="io,cpu")
    job_id = str(uuid.uuid4())
    _send_plain(dist_settings.resolved_broker_url,
                {"task": "continuum.sleep", "queue": "cpu", "kwargs": {"job_id": job_id, "params": {"steps": 2, "step_seconds": 0.05}}})
    job = _finished(resources, job_id, timeout=90)
    assert job.state == "succeeded" and job.kind == "sleep" and job.queue == "cpu", job.error


def test_readme_documents_the_payload():
    text = (REPO / "README.md").read_text()
    section = text.split("## Sending jobs from other languages", 1)[1].split("\n## ", 1)[0]
    for needle in ('"job_id"', '"params"', '"idempotency_key"', "continuum.export", "continuum.train", "`io`", "`cpu`"):
        assert needle in section, needle


def _flower_json(port: int, path: str, auth: str):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def test_flower_api_lists_our_tasks(dist_settings, resources, start_worker, monkeypatch, tmp_path):
    auth = "ops:flower-interop-password"
    monkeypatch.setenv("CONTINUUM_FLOWER_BASIC_AUTH", auth)
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")
    flower = subprocess.Popen([sys.executable, "-m", "scheduler", "flower", "--port", str(port), "--address", "127.0.0.1"],
                              cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _flower_json(port, "/api/workers", auth) is not None, 60, "flower's API")
        start_worker("interop", queues="io")
        _feedback(dist_settings, resources, 3)
        job_id = str(uuid.uuid4())
        _send_plain(dist_settings.resolved_broker_url,
                    {"task": "continuum.export", "queue": "io", "kwargs": {"job_id": job_id, "params": {}}})
        assert _finished(resources, job_id).state == "succeeded"

        def seen() -> dict | None:
            tasks = _flower_json(port, "/api/tasks", auth) or {}
            return next((t for t in tasks.values() if t.get("name") == "continuum.export" and t.get("state") == "SUCCESS"
                         and job_id in str(t.get("kwargs"))), None)

        task = wait_for(seen, 60, "flower to list the export task")
        assert task["worker"] == "interop@test"
        assert "continuum.export" in _flower_json(port, "/api/task/types", auth)["task-types"]
        # The worker's registered tasks (Flower asks it over the broker): every job kind, by its explicit name.
        workers = wait_for(lambda: (_flower_json(port, "/api/workers?refresh=1", auth) or {}).get("interop@test"), 60,
                           "flower to inspect the worker")
        assert {"continuum.export", "continuum.fisher", "continuum.train", "continuum.evaluate",
                "continuum.promote"} <= set(workers["registered"])
    finally:
        flower.send_signal(signal.SIGTERM)
        flower.wait(20)
        log.close()
