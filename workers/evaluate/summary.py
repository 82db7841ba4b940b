"""The headline numbers of an evaluation, in the one vocabulary (recall, generalisation, forgetting,
general retention, suppression), read the same way by the job result, the CLI, the report and the demo.

Evaluations stored before this vocabulary (flat `plasticity`, `forgetting`, `kl_drift`) still read:
their token accuracy on taught rows is recall and their forgetting the worst forgetting.
No torch import: the CLI reads this.
"""

from __future__ import annotations

from typing import Any


def _section(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    value = metrics.get(name)
    return value if isinstance(value, dict) else {}


def summary(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Flat headline figures of one evaluation's metrics (None where not measured)."""
    metrics = metrics or {}
    recall = _section(metrics, "recall")
    general = _section(metrics, "general_retention")
    old = "recall" not in metrics  # an evaluation from before the recall/forgetting vocabulary
    return {
        "recall": recall.get("token_accuracy") if not old else metrics.get("plasticity"),
        "exact_match": recall.get("exact_match") if not old else metrics.get("exact_match"),
        "nll_gain": _section(metrics, "generalisation").get("nll_gain"),
        "forgetting_max": metrics.get("forgetting_max") if not old else metrics.get("forgetting"),
        "forgetting_mean": metrics.get("forgetting_mean"),
        "backward_transfer": metrics.get("backward_transfer"),
        "general_retention": general.get("still_right"),
        "agreement": general.get("agreement"),
        "kl_drift": general.get("kl_drift") if not old else metrics.get("kl_drift"),
        "suppression": _section(metrics, "suppression").get("logprob_drop"),
    }


def fmt(value: Any, digits: int = 2) -> str:
    """A figure for a table: rounded, `–` when not measured."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
