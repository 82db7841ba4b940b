"""A worker records itself in the `workers` table (device, memory, queues) and keeps its heartbeat
fresh, so the producer can route `device=auto` jobs to a queue that someone actually serves."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery
from sqlalchemy import delete, update

from common.db.engine import session_scope
from common.db.models import Worker
from common.ledger import utc_now
from workers.resources import resources_for

log = logging.getLogger("continuum.worker")


def _system_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _infer_device(queues: list[str]) -> str:
    for device in ("cuda", "mps", "cpu"):
        if device in queues:
            return device
    return "io"


def consumed_queues(app: Celery) -> list[str]:
    return sorted(app.amqp.queues.consume_from or app.amqp.queues)


def start_worker_registration(app: Celery, consumer: Any) -> threading.Thread:
    """Upsert this worker's row now and every `worker_heartbeat_seconds` in a daemon thread."""
    settings = app.continuum_settings
    queues = consumed_queues(app)
    row: dict[str, Any] = {
        "name": getattr(consumer, "hostname", None) or f"celery@{socket.gethostname()}",
        "hostname": socket.gethostname(),
        "device": app.conf.get("continuum_worker_device") or _infer_device(queues),
        "memory_bytes": app.conf.get("continuum_worker_memory_bytes") or _system_memory_bytes(),
        "queues": queues,
        "pid": os.getpid(),
    }
    sessions = resources_for(settings).sessions
    app.continuum_worker_name = row["name"]  # for deregister_worker at shutdown

    def upsert() -> None:
        now = utc_now()
        with session_scope(sessions) as session:
            updated = session.execute(
                update(Worker).where(Worker.name == row["name"]).values(**row, heartbeat_at=now)
            ).rowcount
            if not updated:
                session.add(Worker(**row, started_at=now, heartbeat_at=now))

    def beat() -> None:
        from workers.runner.execute import shutdown_requested

        while True:
            try:
                upsert()
            except Exception as exc:  # noqa: BLE001 - a database blip must not kill the worker
                log.warning("worker heartbeat failed: %s", exc)
            if shutdown_requested.wait(settings.worker_heartbeat_seconds):
                return

    upsert()
    log.info("worker %s registered: device=%s queues=%s", row["name"], row["device"], ",".join(queues))
    thread = threading.Thread(target=beat, daemon=True, name="worker-heartbeat")
    thread.start()
    return thread


def deregister_worker(app: Celery) -> None:
    """Remove this worker's row as it shuts down, so routing (and the embedded CLI, which starts a worker
    only when none is live) never counts a stopped worker as live until its heartbeat goes stale."""
    name = getattr(app, "continuum_worker_name", None)
    if name is None:
        return
    try:
        with session_scope(resources_for(app.continuum_settings).sessions) as session:
            session.execute(delete(Worker).where(Worker.name == name))
    except Exception as exc:  # noqa: BLE001 - shutting down anyway; the heartbeat simply goes stale
        log.warning("could not deregister worker %s: %s", name, exc)
