"""Send a job's Celery message: only `{"job_id": …}`, by task name, to the job's queue.

The ledger row is committed first; if the process dies before the send, the reaper re-sends queued
jobs nobody claimed (`queued_resend_seconds`), so a job is never stranded.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from common.db.models import Job
from common.errors import BrokerUnavailable
from workers.kinds import job_kind


def send_job(app: Celery, job: Job) -> None:
    """Publish the message for `job` (by name: moving code never breaks queued messages).

    Raises BrokerUnavailable when the broker cannot be reached (after kombu's short publish retries);
    the job row stays `queued` and the reaper sends it again later.
    """
    kind = job_kind(job.kind)
    try:
        # ignore_result: nobody waits on the AsyncResult (the ledger has the outcome), and without it a
        # Redis result backend subscribes a pub/sub channel per sent task in the producer.
        app.send_task(kind.task_name, kwargs={"job_id": job.id}, queue=job.queue, routing_key=job.queue,
                      ignore_result=True)
    except KombuOperationalError as exc:
        where = urlsplit(app.conf.broker_url or "")
        raise BrokerUnavailable(
            f"broker unreachable at {where.scheme}://{where.hostname}:{where.port} ({exc}): check CONTINUUM_BROKER_URL "
            f"and that the broker is up; job {job.id} stays queued and is sent again once it is reachable"
        ) from exc


def send_job_id(app: Celery, ledger, job_id: str) -> None:
    send_job(app, ledger.get(job_id))
