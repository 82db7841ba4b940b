"""The job kinds: Celery task name, default queue, how each runs, where its logic lives.

Plain data, no imports of the logic: orchestration, the Celery app and the CLI read this table; only
the process that runs a job imports its `entry` (`workers.kinds.load_entry`, so the worker parent never
imports torch). It lives in common/ because enqueueing (common.orchestration) must route jobs without
importing workers/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.errors import ValidationError

Isolation = Literal["process", "inline"]

# Device queues in routing preference order for `device=auto` (best first).
DEVICE_QUEUES = ("cuda", "mps", "cpu")
# Online learning from served chat turns has a queue of its own, so a burst of chat never waits behind
# a training cycle on the device queues (and a worker can be dedicated to it).
ONLINE_QUEUE = "online"
ALL_QUEUES = ("io", *DEVICE_QUEUES, ONLINE_QUEUE)
ML_QUEUES = (*DEVICE_QUEUES, ONLINE_QUEUE)  # queues whose jobs load a model (solo pool, warm fork server)


@dataclass(frozen=True)
class JobKind:
    name: str
    task_name: str
    entry: str  # "module:function" taking a workers.context.JobContext, returning a JSON-able dict
    isolation: Isolation  # "process": a subprocess per job (ML work); "inline": in the worker (light io)
    needs_device: bool  # True: routed to cuda/mps/cpu by device; False: always the `io` queue
    queue: str | None = None  # a fixed queue of its own (overrides the routing above)

    @property
    def default_queue(self) -> str:
        return self.queue or ("cpu" if self.needs_device else "io")


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("export", "continuum.export", "workers.export.job:run", "inline", needs_device=False),
        # Tokenising documents needs only the tokenizer: light enough for the io queue.
        JobKind("ingest", "continuum.ingest", "workers.ingest.job:run", "inline", needs_device=False),
        JobKind("calibrate", "continuum.calibrate", "workers.calibrate.logic:run", "process", needs_device=True),
        JobKind("fisher", "continuum.fisher", "workers.fisher.logic:run", "process", needs_device=True),
        JobKind("train", "continuum.train", "workers.train.logic:run", "process", needs_device=True),
        JobKind("evaluate", "continuum.evaluate", "workers.evaluate.logic:run", "process", needs_device=True),
        JobKind("promote", "continuum.promote", "workers.promote.logic:run", "inline", needs_device=False),
        JobKind("online", "continuum.online", "workers.online.job:run", "process", needs_device=True,
                queue=ONLINE_QUEUE),
        # Diagnostic kinds: exercise the machinery without ML (tests, benchmarks, smoke checks).
        JobKind("sleep", "continuum.sleep", "workers.diagnostics.sleep:run", "process", needs_device=True),
        JobKind("noop", "continuum.noop", "workers.diagnostics.noop:run", "inline", needs_device=False),
    )
}


def job_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValidationError(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(KINDS))}") from None

