"""The producer API for the CLI, the demo and tests: `enqueue_job(settings, kind, …)`.

The logic lives in `common.orchestration.enqueue`; this wrapper only builds the process's
orchestrator (database handles + the Celery sender). It imports downward only; nothing imports it
except `scheduler/` itself, tests and benchmarks.
"""

from __future__ import annotations

from typing import Any

from common.orchestration.enqueue import DEVICES, choose_queue, live_queues
from common.settings import Settings

__all__ = ["DEVICES", "choose_queue", "enqueue_job", "live_queues"]


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
