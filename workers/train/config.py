"""Validated parameters of a `train` job (JSON in the ledger) and the per-cycle training defaults."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import ValidationError
from common.settings import Settings

# Per-cycle defaults for the tiny model's facts workload: a cycle must actually learn its new facts
# (exact match >= 0.9) in minutes on a CPU. Overridable per job (`train` params) or by settings.
CYCLE_DEFAULTS: dict[str, Any] = {
    "epochs": 40,
    "learning_rate": 2e-3,
    "batch_size": 8,
    "warmup_steps": 5,
    "max_length": 256,
    "checkpoint_every": 25,
    "log_every": 5,
    "cancel_check_every": 2,
}


class TrainJobParams(BaseModel):
    """What a `train` job reads from its ledger row."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: int = Field(description="The new dataset this cycle learns.")
    parent_adapter_id: int | None = Field(None, description="Adapter to continue; default: production, else newest.")
    fresh: bool = Field(False, description="Start a new adapter even if a parent exists.")
    fisher_id: int | None = Field(None, description="Fisher for EWC; default: the newest for the parent.")
    recipe: str | None = Field(None, description="Continual recipe name; default: settings.recipe.")
    adapter_name: str | None = Field(None, description="Lineage to publish into; default: settings.adapter_name.")
    recipe_overrides: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides.")
    lora: dict[str, Any] = Field(default_factory=dict, description="LoraSettings overrides (fresh adapter only).")
    strategy: str | None = Field(None, description="lora, sparse_memory or ttt; default: settings.documents_strategy "
                                 "for a documents dataset, else lora (workers/train/strategies.py).")
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="The strategy's option overrides.")
    calibration_id: int | None = Field(None, description="sparse_memory's unit calibration; default: the lineage's.")


def train_config(settings: Settings, overrides: dict[str, Any], parameters: int | None = None):
    """CYCLE_DEFAULTS, then the learning rate and epochs fitted to the base model's size (when
    `parameters` is known), then CONTINUUM_TRAIN_EPOCHS and CONTINUUM_SUPPRESSION_MARGIN, then the
    job's own overrides."""
    from workers.learning.training import TrainConfig

    values = dict(CYCLE_DEFAULTS)
    if parameters is not None:
        sized = model_size_defaults(parameters)
        values.update(learning_rate=sized["learning_rate"], epochs=sized["epochs"])
    if settings.train_epochs:
        values["epochs"] = settings.train_epochs
    values["suppression_margin"] = settings.suppression_margin or None  # 0: unbounded
    values.update(overrides)
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ValidationError(f"train: {exc}") from None


# Per-model-size training defaults (issue 8 part D), chosen with bench/forgetting.py; see the README's
# forgetting table. Keyed by the base model's parameter count: the first row whose bound is at least the
# count applies. The random tiny model (3M weights) needs 40 epochs to learn 30 facts; pretrained
# SmolLM2-135M-Instruct learns them in 8 (measured, 30 facts with sentence answers: lr 1e-3 × 8 epochs
# recalled 0.47 by exact match, lr 2e-3 × 8 epochs 0.87 and 0.93 in two rounds), and every extra
# epoch costs ~1.5 minutes of a 2-core CPU and more of its general answers. `train_config` applies the
# learning rate and epochs; the rank is the same (16) for both sizes, so CONTINUUM_LORA_RANK decides it.
MODEL_SIZE_DEFAULTS: tuple[tuple[float, dict[str, Any]], ...] = (
    (50e6, {"learning_rate": 2e-3, "epochs": 40, "lora_rank": 16}),
    (float("inf"), {"learning_rate": 2e-3, "epochs": 8, "lora_rank": 16}),
)


def model_size_defaults(parameters: int) -> dict[str, Any]:
    """Learning rate, epochs and LoRA rank for a base model with `parameters` weights."""
    for bound, values in MODEL_SIZE_DEFAULTS:
        if parameters <= bound:
            return dict(values)
    return dict(MODEL_SIZE_DEFAULTS[-1][1])


def nested_settings(settings: Settings, recipe_name: str) -> dict[str, Any]:
    """The CONTINUUM_NESTED_* settings as recipe overrides, for a recipe that uses nested tiers (a job's
    own `recipe_overrides` still win). Refuses a tier count that does not match the frequencies."""
    from workers.learning.continual import RECIPES
    from workers.learning.tiers import NestedConfig

    if not RECIPES.get(recipe_name) or not RECIPES[recipe_name].nested_frequencies:
        return {}
    nested = NestedConfig.parse(settings.nested_frequencies, tiers=settings.nested_tiers or None,
                                strategy=settings.nested_strategy, shallow=settings.nested_shallow)
    return {"nested_frequencies": nested.frequencies, "nested_strategy": nested.strategy,
            "nested_shallow": nested.shallow}

