"""The promotion gate: a candidate is promoted only if its evaluation shows it learned the new data
and kept the old. Thresholds come from settings (overridable per job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def decide(metrics: dict[str, Any], *, max_forgetting: float, min_gain: float) -> GateDecision:
    """Pass when forgetting ≤ max_forgetting and new-data gain ≥ min_gain (a missing metric — no
    parent to compare with on the first cycle — does not block)."""
    reasons: list[str] = []
    passed = True
    forgetting = metrics.get("forgetting")
    if forgetting is not None:
        ok = forgetting <= max_forgetting
        passed &= ok
        reasons.append(f"forgetting {forgetting:.4f} {'<=' if ok else '>'} {max_forgetting}")
    else:
        reasons.append("forgetting n/a (no earlier data)")
    gain = metrics.get("gain")
    if gain is not None:
        ok = gain >= min_gain
        passed &= ok
        reasons.append(f"gain {gain:.4f} {'>=' if ok else '<'} {min_gain}")
    else:
        reasons.append("gain n/a (no parent adapter)")
    return GateDecision(passed, reasons)
