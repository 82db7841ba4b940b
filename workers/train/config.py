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


def train_config(settings: Settings, overrides: dict[str, Any]):
    from workers.learning.training import TrainConfig

    values = dict(CYCLE_DEFAULTS)
    if settings.train_epochs:
        values["epochs"] = settings.train_epochs
    values.update(overrides)
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ValidationError(f"train: {exc}") from None
