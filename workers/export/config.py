"""Validated arguments of the export job, built from Settings (job params may override fields)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError as PydanticValidationError, field_validator
from pydantic import model_validator

from common.errors import ValidationError
from common.settings import FeedbackPolicy, Settings, refuse_renamed_policy


class ExportConfig(BaseModel):
    """What one export claims, how it weights rows and how it writes the shard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rows: int = Field(1, ge=1, description="Fewer claimable rows than this: skip, claim nothing.")
    max_rows: int = Field(2_000_000, ge=1, description="Most rows one export claims (one batch).")
    thumbs_up_weight: float = Field(2.0, gt=0, allow_inf_nan=False, description="Training weight of a thumbs-up sample.")
    thumbs_down_policy: FeedbackPolicy = Field(
        FeedbackPolicy.unlikelihood, description="thumbs-down rows: unlikelihood, skip or train_as_positive."
    )
    thumbs_down_weight: float = Field(
        0.5, ge=0, allow_inf_nan=False, description="Weight of a thumbs-down sample under `train_as_positive`."
    )
    holdout_percent: int = Field(10, ge=0, le=50, description="Share of prompts (by prompt hash) never trained.")
    probe_percent: int = Field(20, ge=0, le=50, description="Share of prompts taught but never replayed.")
    fetch_rows: int = Field(5_000, ge=100, description="Rows per fetch on SQLite (memory vs round trips); Postgres streams with COPY.")
    compresslevel: int = Field(1, ge=0, le=9, description="gzip level of the shard; 1 is measured fastest for the size.")

    _renamed_policy = field_validator("thumbs_down_policy", mode="before")(
        classmethod(lambda cls, value: refuse_renamed_policy(value))
    )

    @model_validator(mode="after")
    def _bounds(self) -> "ExportConfig":
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) must not exceed max_rows ({self.max_rows})")
        return self

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "ExportConfig":
        """The config Settings describe, with `overrides` (e.g. job params) on top; errors list every problem."""
        values: dict[str, Any] = {
            "min_rows": settings.export_min_rows,
            "max_rows": settings.export_max_rows,
            "thumbs_up_weight": settings.thumbs_up_weight,
            "thumbs_down_policy": settings.thumbs_down_policy,
            "thumbs_down_weight": settings.thumbs_down_weight,
            "holdout_percent": settings.holdout_percent,
            "probe_percent": settings.probe_percent,
            **overrides,
        }
        return cls.create(**values)

    @classmethod
    def create(cls, **values: Any) -> "ExportConfig":
        """Build and validate; pydantic's errors become one ValidationError naming each bad field."""
        try:
            return cls(**values)
        except PydanticValidationError as exc:
            raise ValidationError(
                [f"export {'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()]
            ) from None

    def policy(self) -> dict[str, Any]:
        """The weighting policy as recorded in the manifest and the `datasets` row."""
        return {
            "thumbs_up_weight": self.thumbs_up_weight,
            "thumbs_down_policy": self.thumbs_down_policy.value,
            "thumbs_down_weight": self.thumbs_down_weight,
            "holdout_percent": self.holdout_percent,
            "probe_percent": self.probe_percent,
            "split_key": "prompt",  # one prompt, one split: see workers.export.shard.prompt_bucket
            "dedup": "content_hash",
        }
