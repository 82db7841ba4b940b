"""Nested multi-frequency learning: the adapter's LoRA modules split into tiers that update at
different frequencies (a fast tier every step, slower tiers every 2, 4, … steps).

Why: slow tiers change less per example, so what they hold survives longer — the nested-learning seed
(`000_…`, `004_…` in shared/seeds) claims less forgetting for it; bench/forgetting.py measures whether
that holds here. The seed's trap is avoided: a slow tier does not drop the gradients of the steps it
skips, it accumulates them and applies their mean at its step (workers.learning.steps.TieredStep).

Which module goes to which tier:
- `depth`: by layer index, in contiguous bands; `shallow="fast"` puts the first layers in the fastest
  tier (the seed's choice: deep layers hold the abstract knowledge worth keeping), `"slow"` the reverse.
  Modules without a layer index (embeddings, LM head) go with the shallowest band.
- `importance`: by the parent adapter's Fisher (the mean Fisher of the module's LoRA tensors): the most
  important modules update slowest. Without a Fisher (first cycle) it falls back to depth and says so.
Tiers hold (nearly) equal numbers of modules. lora_A and lora_B of one module always share a tier:
their product is the update, and moving one factor without the other would change it unevenly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from common.errors import ConfigError
from common.nested_frequencies import PRESETS, frequency_problems, parse_frequencies

STRATEGIES = ("depth", "importance")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_FACTOR = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$")


@dataclass(frozen=True)
class NestedConfig:
    """Tiers, their update frequencies (steps between updates, ascending, the first usually 1), and how
    modules are assigned. Every problem is reported at once."""

    frequencies: tuple[int, ...] = PRESETS["balanced"]
    strategy: Literal["depth", "importance"] = "depth"
    shallow: Literal["fast", "slow"] = "fast"
    tiers: int | None = None  # when given, must equal len(frequencies) (a check on hand-written settings)

    def __post_init__(self) -> None:
        freqs = tuple(self.frequencies)
        problems = frequency_problems(freqs, self.tiers)
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r})")
        if self.shallow not in ("fast", "slow"):
            problems.append(f"shallow must be 'fast' or 'slow' (got {self.shallow!r})")
        if problems:
            raise ConfigError("invalid nested tiers: " + "; ".join(problems))
        object.__setattr__(self, "frequencies", freqs)

    @classmethod
    def parse(cls, frequencies: str, tiers: int | None = None, strategy: str = "depth",
              shallow: str = "fast") -> NestedConfig:
        """From settings text: a preset name (`balanced`) or a comma list (`1,2,4`)."""
        try:
            freqs = parse_frequencies(frequencies)
        except ValueError as exc:
            raise ConfigError(f"invalid nested tiers: {exc}") from None
        return cls(frequencies=freqs, strategy=strategy, shallow=shallow, tiers=tiers)  # type: ignore[arg-type]


@dataclass
class TierPlan:
    """Which trainable parameter belongs to which tier, and the tiers' frequencies."""

    frequencies: tuple[int, ...]
    assignment: dict[str, int]  # parameter name → tier index (0 = fastest)
    strategy: str
    notes: list[str] = field(default_factory=list)


def module_of(parameter_name: str) -> str:
    """The LoRA module a parameter belongs to (its lora_A / lora_B suffix removed)."""
    return _FACTOR.sub("", parameter_name)


def layer_index(parameter_name: str) -> int:
    match = _LAYER.search(parameter_name)
    return int(match.group(1)) if match else -1


def plan_tiers(parameter_names: Sequence[str], config: NestedConfig,
               importance: Mapping[str, float] | None = None) -> TierPlan:
    """Assign every trainable parameter to a tier (see the module docstring)."""
    modules = sorted({module_of(n) for n in parameter_names})
    notes: list[str] = []
    strategy = config.strategy
    if strategy == "importance" and not importance:
        notes.append("nested tiers by depth: no Fisher from an earlier cycle to rank modules by importance")
        strategy = "depth"
    if strategy == "importance":
        score = {m: 0.0 for m in modules}
        count = {m: 0 for m in modules}
        for name, value in (importance or {}).items():
            module = module_of(name)
            if module in score:
                score[module] += float(value)
                count[module] += 1
        # Least important first → fastest tier; the most important modules update slowest.
        ordered = sorted(modules, key=lambda m: (score[m] / max(count[m], 1), m))
    else:
        ordered = sorted(modules, key=lambda m: (layer_index(m), m))
        if config.shallow == "slow":
            ordered.reverse()
    tiers = len(config.frequencies)
    module_tier = {m: min(i * tiers // max(len(ordered), 1), tiers - 1) for i, m in enumerate(ordered)}
    assignment = {n: module_tier[module_of(n)] for n in parameter_names}
    return TierPlan(frequencies=config.frequencies, assignment=assignment, strategy=strategy, notes=notes)


def fisher_importance(fisher_values: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Mean Fisher per LoRA tensor, keyed by parameter name (LoRA-space Fisher only)."""
    if not fisher_values:
        return None
    return {name: float(value.float().mean()) for name, value in fisher_values.items()}
