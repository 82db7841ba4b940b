"""A task refuses a job of another kind, or one that arrived on another queue (issue 9).

Before, a bare `{"job_id": …}` ran whatever kind the row said on whatever queue it arrived (a cpu
job ran on the io worker). Real Postgres, Redis and a real io-only worker process.
"""

from __future__ import annotations

import pytest

from common.db.engine import session_scope
from common.db.models import Job
from tests.integration.distributed.harness import wait_for
from workers.celery_app import app_for

pytestmark = [pytest.mark.integration]


def _row(resources, job_id: str) -> dict:
    with session_scope(resources.sessions) as session:
        job = session.get(Job, job_id)
        return {c.name: getattr(job, c.name) for c in Job.__table__.columns}


def test_a_message_naming_a_job_of_another_kind_or_queue_is_refused_and_changes_nothing(
        dist_settings, resources, start_worker):
    worker = start_worker("io-only", queues="io")
    app = app_for(dist_settings)
    # A cpu job (a `sleep`) that nobody sent; then two forged messages reach the io worker.
    job, _ = resources.ledger.create("sleep", {"steps": 1, "step_seconds": 0.01}, queue="cpu")
    noop, _ = resources.ledger.create("noop", {}, queue="io")
    before = _row(resources, job.id)
    app.send_task("continuum.export", kwargs={"job_id": job.id}, queue="io", routing_key="io", ignore_result=True)
    app.send_task("continuum.sleep", kwargs={"job_id": job.id}, queue="io", routing_key="io", ignore_result=True)
    # A legitimate message after them: once it has run, the worker has handled both forged ones.
    app.send_task("continuum.noop", kwargs={"job_id": noop.id}, queue="io", routing_key="io", ignore_result=True)
    wait_for(lambda: resources.ledger.get(noop.id).state == "succeeded", 60, "the io worker to run the noop job")
    refusals = (f"refused message for job {job.id} at continuum.export: it is a 'sleep' job",
                f"refused message for job {job.id} at continuum.sleep: it belongs on queue 'cpu' but arrived on 'io'")
    wait_for(lambda: all(line in worker.text() for line in refusals), 30, "both refusals in the worker log")
    assert _row(resources, job.id) == before  # not claimed, no attempt used, no state change
