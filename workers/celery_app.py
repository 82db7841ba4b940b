"""The Celery application, built from Settings by `make_celery` (nothing is created at import time).

Celery's CLI needs a module attribute: `celery -A workers.celery_app worker` reads `app`, which this
module builds lazily from the environment on first access (PEP 562 `__getattr__`).

Messages carry only `{"job_id": "…"}`; the ledger (database) is the source of truth. Every setting
below says why this workload needs it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from common.errors import ConfigError
from common.settings import Settings
from workers.kinds import ALL_QUEUES, KINDS, JobKind

log = logging.getLogger("continuum.tasks")


def _longest_hard_limit(settings: Settings) -> int:
    from workers.runner.execute import hard_time_limit

    return max(hard_time_limit(settings, name) for name in KINDS)


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.resolved_broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        return {
            # Redis redelivers unacked messages after this; shorter than a job = a second copy of a job
            # that is still running (the lease would stop it, but it wastes a worker slot).
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
        }
    return {}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`, with every continuum task registered under its explicit name."""
    longest = _longest_hard_limit(settings)
    if settings.broker_visibility_timeout_seconds <= longest:
        raise ConfigError(
            f"CONTINUUM_BROKER_VISIBILITY_TIMEOUT_SECONDS ({settings.broker_visibility_timeout_seconds}) must exceed the "
            f"longest job hard time limit ({longest} s): raise it or lower CONTINUUM_JOB_SOFT_TIME_LIMITS"
        )
    broker = settings.resolved_broker_url
    if broker.startswith("sqla+sqlite:///"):
        from pathlib import Path

        from common.home import ensure_private_dir, ensure_private_file

        # The embedded broker holds every message: create it owner-only before kombu opens it (its
        # WAL files then inherit the mode).
        path = Path(broker.removeprefix("sqla+sqlite:///"))
        ensure_private_dir(path.parent)
        ensure_private_file(path)
    redis_broker = broker.startswith(("redis://", "rediss://", "sentinel://"))
    app = Celery("continuum", broker=broker, set_as_current=False)
    transport_options = _transport_options(settings)
    exchange = Exchange("continuum", type="direct")
    app.conf.update(
        # JSON only: a message can never make a worker unpickle attacker-controlled bytes.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        # Ack after the task body ran: a worker killed mid-job leaves the message to be redelivered.
        task_acks_late=True,
        # A pool process killed by a signal (OOM, kill -9) requeues its message instead of acking it;
        # our ledger's attempt cap (job_max_attempts) stops a poison job from looping forever.
        task_reject_on_worker_lost=True,
        # Take one message at a time: a job waiting in a busy worker's prefetch buffer could run elsewhere.
        worker_prefetch_multiplier=1,
        # Redelivery timeout longer than the longest job, everywhere Celery/kombu reads it.
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        # Results live in the ledger; Celery's backend only carries live progress (Redis mode).
        result_backend=broker if redis_broker else None,
        task_ignore_result=True,
        result_expires=24 * 3600,
        # Task events feed Flower (task list, progress events); `sent` events show queued tasks too.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Explicit queues and routes: a worker subscribes by device; nothing lands in a default queue.
        task_queues=[Queue(name, exchange, routing_key=name) for name in ALL_QUEUES],
        task_default_queue="io",
        task_default_exchange="continuum",
        task_default_routing_key="io",
        task_routes={kind.task_name: {"queue": kind.default_queue, "routing_key": kind.default_queue} for kind in KINDS.values()}
        | {"continuum.reap": {"queue": "io", "routing_key": "io"}, "continuum.pipeline_tick": {"queue": "io", "routing_key": "io"}},
        # Keep retrying the broker at start-up and after a restart (Redis restarts must not kill workers).
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # On a broker blip keep running jobs: the lease already stops a redelivered copy from running,
        # and cancelling would throw away hours of training.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    app.continuum_settings = settings  # type: ignore[attr-defined]  # read by the task bodies
    for kind in KINDS.values():
        _register_job_task(app, kind, settings)
    _register_service_tasks(app)
    _wire_worker_signals(app)
    return app


def _register_job_task(app: Celery, kind: JobKind, settings: Settings) -> None:
    from workers.runner.execute import hard_time_limit, soft_time_limit

    def job_task(self, job_id: str | None = None, params: dict[str, Any] | None = None,
                 idempotency_key: str | None = None, **unknown: Any) -> dict[str, Any]:
        from workers.runner.execute import execute_job
        from workers.runner.submission import resolve_job_id
        from workers.resources import resources_for

        if params is not None or idempotency_key is not None or unknown or job_id is None:
            # A message from a client that cannot write ledger rows (another language): create it here.
            settings = self.app.continuum_settings
            job_id = resolve_job_id(
                settings, resources_for(settings).ledger, kind, job_id=job_id, params=params,
                idempotency_key=idempotency_key, unknown=unknown, message_id=self.request.id,
                delivered_to=(self.request.delivery_info or {}).get("routing_key"),
            )
        delivered = (self.request.delivery_info or {}).get("routing_key") or None
        result = execute_job(self, job_id, kind=kind.name, queue=delivered)
        if result.get("claim") == "refused":  # explained (one more read) only on this rare path
            return _refuse_mismatch(self, kind, job_id) or result
        return result

    job_task.__name__ = job_task.__qualname__ = f"{kind.name}_task"
    job_task.__doc__ = (f"Run one `{kind.name}` job (payload: {{\"job_id\": …}}, or {{\"params\": …, "
                        f"\"idempotency_key\": …}} from clients that cannot write the ledger).")
    app.task(
        name=kind.task_name,
        bind=True,
        # Not shared: a shared task is added to every app built later in this process (tests and
        # producers build several), where a second app's closure collides with it by name.
        shared=False,
        # Per-kind limits. Process jobs enforce them in the supervisor (works in every pool, and the
        # soft one asks for a checkpoint); these Celery limits are the backstop for prefork pools.
        soft_time_limit=soft_time_limit(settings, kind.name) + 30,
        time_limit=hard_time_limit(settings, kind.name) + 60,
        acks_late=True,
        reject_on_worker_lost=True,
        # Retries are the ledger's (attempt cap + reaper), never Celery's autoretry.
        max_retries=0,
    )(job_task)


def _refuse_mismatch(task, kind: JobKind, job_id: str) -> dict[str, Any] | None:
    """Explain (and log) the refusal of a message whose job is of another kind, or that arrived on
    another queue than the job's. The claim itself refuses it (its WHERE names the task's kind and the
    delivery queue), so nothing was touched: no claim, no attempt used; the message is acked.

    Without this a bare `{"job_id": …}` ran whatever kind the row says wherever it arrived (a cpu job
    on the io worker).
    """
    from sqlalchemy import select

    from common.db.models import Job
    from workers.resources import resources_for

    ledger = resources_for(task.app.continuum_settings).ledger
    with ledger.engine.connect() as conn:
        row = conn.execute(select(Job.kind, Job.queue).where(Job.id == job_id)).first()
    if row is None:
        return None  # the claim reports it missing
    delivered = (task.request.delivery_info or {}).get("routing_key")
    if row.kind != kind.name:
        why = f"it is a {row.kind!r} job, this task runs {kind.name!r}"
    elif delivered and delivered != row.queue:
        why = f"it belongs on queue {row.queue!r} but arrived on {delivered!r}"
    else:
        return None
    log.warning("refused message for job %s at %s: %s (the job is unchanged)", job_id, kind.task_name, why)
    return {"job_id": job_id, "ran": False, "refused": why}


def _register_service_tasks(app: Celery) -> None:
    @app.task(name="continuum.reap", bind=True, shared=False, soft_time_limit=120, time_limit=180)
    def reap(self) -> dict[str, Any]:
        """Requeue jobs whose lease expired (fail those out of attempts); re-send stale queued jobs
        (boundedly); advance or end stalled pipeline runs."""
        from workers.reaper import sweep

        return sweep(self.app.continuum_settings, self.app)

    @app.task(name="continuum.pipeline_tick", bind=True, shared=False, soft_time_limit=120, time_limit=180)
    def pipeline_tick(self, schedule: str, tick: str) -> dict[str, Any]:
        """Start the pipeline run of (schedule, tick) unless one exists (idempotent)."""
        from datetime import datetime

        from common.orchestration.pipeline import start_pipeline
        from workers.dispatch import orchestrator_for

        run, created = start_pipeline(
            orchestrator_for(self.app.continuum_settings, self.app), schedule=schedule,
            tick=datetime.fromisoformat(tick),
        )
        return {"pipeline_run_id": run.id, "created": created}


def _wire_worker_signals(app: Celery) -> None:
    from workers.runner.execute import shutdown_requested

    @signals.worker_shutting_down.connect(weak=False)
    def _on_shutdown(**_: Any) -> None:
        shutdown_requested.set()  # running jobs checkpoint and hand themselves back

    @signals.worker_shutdown.connect(weak=False)
    def _on_stopped(**_: Any) -> None:
        from workers.registry import deregister_worker

        deregister_worker(app)

    @signals.worker_ready.connect(weak=False)
    def _on_ready(sender=None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return  # another app's worker in this process (tests build several)
        from workers.registry import consumed_queues, start_worker_registration

        start_worker_registration(app, sender)
        _warm_job_processes(app, consumed_queues(app))


def _warm_job_processes(app: Celery, queues: list[str]) -> None:
    """A worker that runs ML jobs starts its job fork server now, so the imports are done before the
    first job arrives (job_process.py). An io-only worker never starts a job process: no server."""
    from workers.kinds import ML_QUEUES
    from workers.runner.job_process import FORKSERVER, resolve_start_method, warm_up

    settings = app.continuum_settings
    if resolve_start_method(settings.job_process_start) == FORKSERVER and set(queues) & set(ML_QUEUES):
        warm_up(in_background=True)


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """`app` / `celery` for Celery's CLI, built from the environment on first access."""
    global _app
    if name in {"app", "celery"}:
        if _app is None:
            from common.settings import load_settings

            _app = make_celery(load_settings().check())
        return _app
    raise AttributeError(name)


_apps: dict[int, Celery] = {}


def app_for(settings: Settings) -> Celery:
    """One app per settings object in this process (producers send many messages through it)."""
    found = _apps.get(id(settings))
    if found is None or found.continuum_settings is not settings:
        found = _apps[id(settings)] = make_celery(settings)
    return found
