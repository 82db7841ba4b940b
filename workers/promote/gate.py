"""The promotion gate: a candidate is promoted only if its evaluation shows it learned the new data,
generalised at least as well as its parent, kept what earlier cycles taught (since first taught, not
just since the parent), kept the base model's general behaviour and pushed disliked answers down.

Thresholds come from settings (`CONTINUUM_GATE_*`), overridable per promote job. Every threshold
gives one reason line, passed or failed; a measure the evaluation could not take (no holdout rows,
no earlier dataset, no thumbs-down rows, a base that answers no general question right) says so and
does not block.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class GateThresholds:
    """One threshold per measure of the evaluation vocabulary (`workers.learning.evaluation`)."""

    min_recall: float = 0.5
    recall_exact_match: bool = False  # judge recall by exact match when the evaluation decoded answers
    min_generalisation_gain: float = -0.05
    max_forgetting: float = 0.10
    min_general_retention: float = 0.9
    min_suppression: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "GateThresholds":
        """The settings' `gate_*` values with non-None `overrides` (promote job params) on top."""
        values = {f.name: getattr(settings, f"gate_{f.name}") for f in fields(cls)}
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})


def _section(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    value = metrics.get(name)
    return value if isinstance(value, dict) else {}


def _check(reasons: list[str], label: str, value: float | None, op: str, limit: float, missing: str) -> bool:
    """Append one reason line; True when the value passes (or is missing, which does not block)."""
    if value is None:
        reasons.append(f"{label} n/a ({missing})")
        return True
    ok = value >= limit if op == ">=" else value <= limit
    shown = op if ok else {">=": "<", "<=": ">"}[op]
    text = f"{value:.2f}"
    if float(text) == round(limit, 2) and value != limit:  # "0.10 > 0.1" would read as a contradiction
        text = f"{value:.4f}"
    reasons.append(f"{label} {text} {shown} {limit:g}" + ("" if ok else " FAIL"))
    return ok


def decide(metrics: dict[str, Any], thresholds: GateThresholds = GateThresholds()) -> GateDecision:
    """Pass when every measured threshold passes; one reason per threshold, in a fixed order."""
    reasons: list[str] = []
    recall = _section(metrics, "recall")
    # Evaluations from before the recall/forgetting vocabulary stored flat "plasticity"/"forgetting".
    token_recall = recall.get("token_accuracy", metrics.get("plasticity") if not recall else None)
    exact = recall.get("exact_match", metrics.get("exact_match") if not recall else None)
    if thresholds.recall_exact_match and exact is not None:
        recall_ok = _check(reasons, "recall (exact match)", exact, ">=", thresholds.min_recall, "")
    else:
        recall_ok = _check(reasons, "recall (token accuracy)", token_recall, ">=", thresholds.min_recall,
                           "nothing taught to score")
    generalisation_ok = _check(
        reasons, "generalisation gain (holdout NLL vs parent)", _section(metrics, "generalisation").get("nll_gain"),
        ">=", thresholds.min_generalisation_gain, "no holdout rows",
    )
    forgetting = metrics.get("forgetting_max", metrics.get("forgetting") if "retention" not in metrics else None)
    forgetting_ok = _check(reasons, "worst forgetting since first taught", forgetting, "<=", thresholds.max_forgetting,
                           "no earlier dataset with probe rows")
    general_ok = _check(
        reasons, "general retention (base's right answers kept)",
        _section(metrics, "general_retention").get("still_right"), ">=", thresholds.min_general_retention,
        "not measured, or the base answers no general question right",
    )
    suppression_ok = _check(
        reasons, "suppression (thumbs-down log-prob drop)", _section(metrics, "suppression").get("logprob_drop"),
        ">=", thresholds.min_suppression, "no thumbs-down rows",
    )
    passed = recall_ok and generalisation_ok and forgetting_ok and general_ok and suppression_ok
    return GateDecision(passed, reasons)
