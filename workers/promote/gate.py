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


def decide(metrics: dict[str, Any], *, max_forgetting: float, min_gain: float, min_plasticity: float = 0.0) -> GateDecision:
    """Pass when forgetting ≤ max_forgetting, new-data gain ≥ min_gain and answer accuracy on the new
    data ≥ min_plasticity (a missing metric — no parent to compare with on the first cycle — does not block)."""
    reasons: list[str] = []
    passed = True
    # Answer accuracy: exact match when the evaluation decoded answers, else token accuracy.
    learned = metrics.get("exact_match") if metrics.get("exact_match") is not None else metrics.get("plasticity")
    if learned is not None:
        ok = learned >= min_plasticity
        passed &= ok
        reasons.append(f"plasticity {learned:.4f} {'>=' if ok else '<'} {min_plasticity}")
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
