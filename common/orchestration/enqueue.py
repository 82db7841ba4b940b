"""Enqueueing: put a job in the ledger, then send its message to the right queue.

`device="auto"` routes ML jobs to the best device queue that a live worker serves (cuda > mps > cpu);
`device="cuda"|"mps"|"cpu"` forces one. Light jobs (export, promote) always go to `io`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Worker
from common.errors import ValidationError
from common.ledger import utc_now
from common.orchestration.context import Orchestrator
from common.orchestration.kinds import DEVICE_QUEUES, JobKind, job_kind
from common.settings import Settings

DEVICES = ("auto", *DEVICE_QUEUES)


def live_queues(settings: Settings, sessions: sessionmaker[Session]) -> set[str]:
    """Queues served by at least one worker whose heartbeat is fresh."""
    since = utc_now() - timedelta(seconds=settings.worker_live_seconds)
    with session_scope(sessions) as session:
        rows = session.scalars(select(Worker.queues).where(Worker.heartbeat_at >= since)).all()
    return {queue for queues in rows for queue in (queues or [])}


def choose_queue(settings: Settings, sessions: sessionmaker[Session], kind: JobKind, device: str = "auto") -> str:
    """The queue a job of `kind` goes to on `device` (see the module docstring)."""
    if device not in DEVICES:
        raise ValidationError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if kind.queue is not None:
        return kind.queue
    if not kind.needs_device:
        return "io"
    if device != "auto":
        return device
    served = live_queues(settings, sessions)
    return next((queue for queue in DEVICE_QUEUES if queue in served), "cpu")


def enqueue_job(
    orch: Orchestrator,
    kind: str,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    device: str = "auto",
    pipeline_run_id: str | None = None,
    max_attempts: int | None = None,
) -> str:
    """Create (or find, by idempotency key) a job and send its message; returns the job id.

    A job that already existed under the key is not sent again unless it is still queued (a resend is
    harmless: the claim lets only one delivery run it). Outside a pipeline, parameters naming rows that
    do not exist are refused first (`preflight`): nothing is written.
    """
    from common.orchestration.preflight import check_job_params

    spec = job_kind(kind)
    queue = choose_queue(orch.settings, orch.sessions, spec, device)
    if pipeline_run_id is None:
        # A pipeline's steps are not checked here: a step that cannot run must fail as a job, so the
        # run fails at that step (and can be resumed) instead of stalling on an enqueue that raises.
        check_job_params(orch.sessions, spec.name, params or {})
    job, created = orch.ledger.create(
        spec.name,
        params or {},
        queue=queue,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts or orch.settings.job_max_attempts,
        pipeline_run_id=pipeline_run_id,
    )
    if created or job.state == "queued":
        orch.sender.send(job.id, job.kind, job.queue)
    return job.id
