"""Send a job's Celery message: only `{"job_id": …}`, by task name, to the job's queue.

The ledger row is committed first; if the process dies before the send, the reaper re-sends queued
jobs nobody claimed (`queued_resend_seconds`), so a job is never stranded.
"""

from __future__ import annotations

from celery import Celery

from common.db.models import Job
from workers.kinds import job_kind


def send_job(app: Celery, job: Job) -> None:
    """Publish the message for `job` (by name: moving code never breaks queued messages)."""
    kind = job_kind(job.kind)
    app.send_task(kind.task_name, kwargs={"job_id": job.id}, queue=job.queue, routing_key=job.queue)


def send_job_id(app: Celery, ledger, job_id: str) -> None:
    send_job(app, ledger.get(job_id))
