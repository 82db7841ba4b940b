"""The producer API for the CLI, the demo and tests: `enqueue_job(settings, kind, …)`.

The logic lives in `common.orchestration.enqueue`; this wrapper only builds the process's
orchestrator (database handles + the Celery sender). It imports downward only; nothing imports it
except `scheduler/` itself, tests and benchmarks.
"""

from __future__ import annotations

from typing import Any

from common.orchestration.enqueue import DEVICES, choose_queue, live_queues
from common.settings import Settings

__all__ = ["DEVICES", "choose_queue", "enqueue_job", "live_queues", "preflight_job"]


def enqueue_job(
    settings: Settings,
    kind: str,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    device: str = "auto",
    pipeline_run_id: str | None = None,
    max_attempts: int | None = None,
) -> str:
    """Create (or find, by idempotency key) a job and send its message; returns the job id."""
    from common.orchestration.enqueue import enqueue_job as enqueue
    from workers.dispatch import orchestrator_for

    return enqueue(orchestrator_for(settings), kind, params, idempotency_key=idempotency_key, device=device,
                   pipeline_run_id=pipeline_run_id, max_attempts=max_attempts)


def preflight_job(settings: Settings, kind: str, params: dict[str, Any] | None = None, device: str = "auto") -> None:
    """The enqueue-time checks alone (kind, device, parameters), so a command can refuse bad input
    before it starts a worker; `enqueue_job` runs them again."""
    from common.errors import ValidationError
    from common.orchestration.kinds import job_kind
    from common.orchestration.preflight import check_job_params
    from workers.dispatch import orchestrator_for

    spec = job_kind(kind)
    if device not in DEVICES:
        raise ValidationError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    check_job_params(orchestrator_for(settings).sessions, spec.name, params or {})
