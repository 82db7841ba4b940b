"""The strategies a `train` cycle can learn with (`strategy` in its parameters) and their options.

`lora` is the recipe's own LoRA; `sparse_memory` and `ttt` are the document strategies of
`workers/documents`, run inside the batch cycle (`workers/train/strategies.py`). `retrieval` changes
no weight, so it is not a cycle strategy: it is compared with them by `continuum documents compare`.
"""

from __future__ import annotations

from typing import Any

from common.errors import ValidationError

CYCLE_STRATEGIES: dict[str, dict[str, Any]] = {
    "lora": {},
    # Units opened per layer per cycle, and the share of a layer's units counted "active" on a text.
    "sparse_memory": {"top_units": 64, "active_fraction": 0.05},
    # The blend of the frozen MLPs with their trainable deltas: starts high, decays per cycle to a floor.
    "ttt": {"alpha_start": 0.95, "alpha_decay": 0.05, "alpha_floor": 0.5},
}


def strategy_options(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The strategy's defaults with `overrides` applied; one line naming the fix for a wrong name or option."""
    if name not in CYCLE_STRATEGIES:
        raise ValidationError(f"unknown strategy {name!r}; a train cycle learns with one of "
                              f"{', '.join(CYCLE_STRATEGIES)}")
    defaults = CYCLE_STRATEGIES[name]
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ValidationError(f"strategy {name!r} has no option(s) {unknown}; its options: {known}")
    options = {**defaults, **(overrides or {})}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"strategy {name!r} option {key} must be a number, not {value!r}")
    if name == "sparse_memory":
        if not (isinstance(options["top_units"], int) and options["top_units"] >= 1):
            raise ValidationError(f"sparse_memory top_units must be a whole number >= 1, not {options['top_units']!r}")
        if not 0 < options["active_fraction"] <= 1:
            raise ValidationError(f"sparse_memory active_fraction must be in (0, 1], not {options['active_fraction']!r}")
    if name == "ttt" and not (0 <= options["alpha_floor"] <= options["alpha_start"] <= 1 and options["alpha_decay"] >= 0):
        raise ValidationError(f"ttt needs 0 <= alpha_floor ({options['alpha_floor']}) <= alpha_start "
                              f"({options['alpha_start']}) <= 1 and alpha_decay ({options['alpha_decay']}) >= 0")
    return options


def parent_strategy(metadata: dict[str, Any] | None) -> str:
    return ((metadata or {}).get("strategy") or {}).get("name", "lora")


def cycle_strategy_name(named: str | None, parent: Any, documents: bool, settings: Any) -> str:
    """The strategy a cycle learns with: the one named; else the parent's (a lineage keeps one); else, for
    a documents dataset, CONTINUUM_DOCUMENTS_STRATEGY; else lora."""
    if named:
        return named
    if parent is not None:
        return parent_strategy(parent.metadata_)
    return settings.documents_strategy if documents else "lora"
