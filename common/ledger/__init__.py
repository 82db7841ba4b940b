"""The job ledger (guide §3): jobs are rows; claims are leases; every transition is conditional."""

from __future__ import annotations

from common.ledger.ledger import (
    Claim,
    ClaimOutcome,
    Heartbeat,
    JobLedger,
    ReapResult,
    is_finished,
    utc_now,
)
from common.ledger.fencing import CancelledAtFinish, FinishRefused, LeaseLost

__all__ = ["CancelledAtFinish", "Claim", "ClaimOutcome", "FinishRefused", "Heartbeat", "JobLedger", "LeaseLost",
           "ReapResult", "is_finished", "utc_now"]
