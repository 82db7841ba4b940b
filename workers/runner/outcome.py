"""What running a job came to, independent of how it ran (subprocess or inline)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.ledger import Heartbeat


class OutcomeKind(str, enum.Enum):
    succeeded = "succeeded"
    failed = "failed"  # see `retryable`
    requeue = "requeue"  # checkpointed and handed back (shutdown, soft time limit)
    cancelled = "cancelled"
    lease_lost = "lease_lost"  # someone else owns the job now: record nothing


@dataclass
class Outcome:
    kind: OutcomeKind
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    retryable: bool = True
    progress: dict[str, Any] | None = None  # the last progress this attempt reported (None: none)
    # A job process only: how it was started and how long until the job's code was loaded.
    start_method: str | None = None
    startup_seconds: float | None = None
    code_preloaded: bool | None = None  # torch was already imported when the job process started


@dataclass
class Supervision:
    """What a runner needs from its caller: lease renewal, progress fan-out, shutdown signal, limits."""

    heartbeat: Callable[[dict[str, Any] | None], Heartbeat]
    publish_progress: Callable[[dict[str, Any]], None]
    shutting_down: Callable[[], bool]
    heartbeat_seconds: float
    soft_time_limit: float
    hard_time_limit: float
    stop_grace_seconds: float
    # The lease this attempt holds: passed to the job process so its final write is fenced, and the
    # lease length bounds how long heartbeat errors are tolerated (until the lease would expire).
    lease_owner: str = ""
    lease_token: int | None = None
    lease_seconds: float = 0.0
