"""Send a job's Celery message: only `{"job_id": …}`, by task name, to the job's queue.

`CelerySender` is the Celery implementation of orchestration's `JobSender`; `orchestrator_for` wires
it with this process's database handles. The ledger row is committed first; if the process dies
before the send, the reaper re-sends queued jobs nobody claimed (`queued_resend_seconds`, at most
`queued_max_resends` times), so a job is never stranded silently.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from common.db.models import Job
from common.errors import BrokerUnavailable
from common.orchestration import Orchestrator
from common.settings import Settings
from workers.kinds import job_kind


class CelerySender:
    """`JobSender` over a Celery app (the app is built on first send: reading needs no broker)."""

    def __init__(self, app: Celery | None = None, settings: Settings | None = None):
        if app is None and settings is None:
            raise ValueError("CelerySender needs a Celery app or the settings to build one")
        self._app = app
        self._settings = settings

    @property
    def app(self) -> Celery:
        if self._app is None:
            from workers.celery_app import app_for

            self._app = app_for(self._settings)
        return self._app

    def send(self, job_id: str, kind: str, queue: str) -> None:
        """Publish `{"job_id": job_id}` to the task of `kind` on `queue` (by name: moving code never
        breaks queued messages). Raises BrokerUnavailable when the broker cannot be reached (after
        kombu's short publish retries); the job row stays `queued` and the reaper sends it again later.
        """
        app = self.app
        try:
            # ignore_result: nobody waits on the AsyncResult (the ledger has the outcome), and without it a
            # Redis result backend subscribes a pub/sub channel per sent task in the producer.
            app.send_task(job_kind(kind).task_name, kwargs={"job_id": job_id}, queue=queue, routing_key=queue,
                          ignore_result=True)
        except KombuOperationalError as exc:
            where = urlsplit(app.conf.broker_url or "")
            raise BrokerUnavailable(
                f"broker unreachable at {where.scheme}://{where.hostname}:{where.port} ({exc}): check "
                f"CONTINUUM_BROKER_URL and that the broker is up; job {job_id} stays queued and is sent again "
                f"once it is reachable"
            ) from exc


def check_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Raise BrokerUnavailable, naming CONTINUUM_BROKER_URL, unless the broker answers within `timeout`
    seconds. Commands call it before they start a worker or wait on one, so an unreachable broker is
    one line in seconds instead of a worker that never comes up."""
    from workers.celery_app import app_for

    app = app_for(settings)
    where = urlsplit(app.conf.broker_url or "")
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except (KombuOperationalError, OSError) as exc:
        raise BrokerUnavailable(
            f"broker unreachable at {where.scheme}://{where.hostname}:{where.port} ({exc}): check "
            "CONTINUUM_BROKER_URL and that the broker is up"
        ) from None


def send_job(app: Celery, job: Job) -> None:
    """Publish the message for `job` through `app` (see `CelerySender.send`)."""
    CelerySender(app).send(job.id, job.kind, job.queue)


def send_job_id(app: Celery, ledger, job_id: str) -> None:
    send_job(app, ledger.get(job_id))


def orchestrator_for(settings: Settings, app: Celery | None = None) -> Orchestrator:
    """Orchestration handles for this process: its sessions and ledger, sending through `app` (or the
    process's app for `settings`, built on the first send)."""
    from workers.resources import resources_for

    resources = resources_for(settings)
    return Orchestrator(settings=settings, sessions=resources.sessions, ledger=resources.ledger,
                        sender=CelerySender(app, settings))
