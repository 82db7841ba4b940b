"""The stored Fisher: safetensors tensors plus str→str metadata (samples, mode, space, γ, scale, and
what it was computed for: adapter, base model, recipe).

Written by the cycle (or `fisher` job) that computed it and read by the next cycle's EWC; never pickled.

Normalisation, once: EWC needs λ to mean the same thing from cycle to cycle, so the Fisher is put on a
fixed scale: ``scale = 1 / mean(F_first)``, computed from the first Fisher of an online chain and
carried forward unchanged by every fold (`fold`). EWC multiplies by that stored scale at use and never
re-normalises: rescaling ``γF_old + F_new`` to mean 1 at every use would cancel online EWC's
accumulation (importance that grows over cycles would be divided away again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from common.errors import ValidationError


def unit_mean_scale(values: Mapping[str, torch.Tensor]) -> float | None:
    """``1 / mean entry`` of a Fisher, or None when it is all zeros (no scale can be fixed from it)."""
    total = sum(float(v.double().sum()) for v in values.values())
    count = sum(v.numel() for v in values.values())
    mean = total / max(count, 1)
    return 1.0 / mean if mean > 0.0 else None


@dataclass
class FisherArtifact:
    """A Fisher diagonal plus what produced it; stored as safetensors (metadata is str→str).

    `scale` multiplies `values` at use (see the module docstring); None means not fixed yet (an
    all-zero first Fisher, or a file written before the scale was stored).
    `adapter_id`, `base_model_id`, `space` and `recipe` say what the Fisher belongs to: `train`
    refuses one computed for another adapter, base model or parameter space.
    """

    values: dict[str, torch.Tensor]
    num_samples: int
    mode: str
    space: str = "lora"
    gamma: float = 1.0
    base_model_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    scale: float | None = None
    adapter_id: int | None = None
    recipe: dict = field(default_factory=dict)

    def scaled(self) -> dict[str, torch.Tensor]:
        """The values EWC weighs by: ``scale · F`` (the scale is fixed here when none is stored)."""
        scale = self.scale if self.scale is not None else unit_mean_scale(self.values)
        if scale is None:
            return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in self.values.items()}
        return {k: v.float() * scale for k, v in self.values.items()}

    def metadata(self) -> dict[str, str]:
        return {
            "format": "continuum.fisher.v1",
            "num_samples": str(self.num_samples),
            "mode": self.mode,
            "space": self.space,
            "gamma": repr(float(self.gamma)),
            "base_model_id": self.base_model_id,
            "extra": json.dumps(self.extra, sort_keys=True),
            "scale": "" if self.scale is None else repr(float(self.scale)),
            "adapter_id": "" if self.adapter_id is None else str(self.adapter_id),
            "recipe": json.dumps(self.recipe, sort_keys=True),
        }

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in self.values.items()}, metadata=self.metadata())

    @classmethod
    def from_bytes(cls, data: bytes) -> FisherArtifact:
        from safetensors.torch import load

        values = load(data)
        meta = _read_metadata(data)
        if meta.get("format") != "continuum.fisher.v1":
            raise ValidationError("not a continuum Fisher file (metadata 'format' missing); recompute the Fisher")
        return cls(
            values=values,
            num_samples=int(meta["num_samples"]),
            mode=meta["mode"],
            space=meta.get("space", "lora"),
            gamma=float(meta["gamma"]),
            base_model_id=meta.get("base_model_id", ""),
            extra=json.loads(meta.get("extra", "{}")),
            scale=float(meta["scale"]) if meta.get("scale") else None,
            adapter_id=int(meta["adapter_id"]) if meta.get("adapter_id") else None,
            recipe=json.loads(meta.get("recipe") or "{}"),
        )

    def save(self, path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> FisherArtifact:
        with open(path, "rb") as fh:
            return cls.from_bytes(fh.read())


def can_fold(previous: FisherArtifact | None, space: str, base_model_id: str) -> bool:
    """Whether `previous` can start the online sum: same parameter space and same base model."""
    return previous is not None and previous.space == space and previous.base_model_id == base_model_id


def fold(
    previous: FisherArtifact | None,
    new: Mapping[str, torch.Tensor],
    *,
    num_samples: int,
    mode: str,
    space: str,
    gamma: float,
    base_model_id: str = "",
    adapter_id: int | None = None,
    recipe: dict | None = None,
) -> FisherArtifact:
    """Online EWC: ``F ← γ F_old + F_new``, keeping the chain's scale (fixed once, from its first Fisher).

    A `previous` of another space or base model cannot be combined: the chain starts afresh (and its
    scale is fixed from `new`).
    """
    from workers.learning.fisher import combine_online

    if not can_fold(previous, space, base_model_id):
        previous = None
    values = combine_online(previous.values if previous else None, new, gamma)
    scale = previous.scale if previous is not None and previous.scale is not None else None
    if scale is None:
        # First of its chain (or an older file without a stored scale): fix it now, from what is here.
        scale = unit_mean_scale(values)
    return FisherArtifact(
        values=values,
        num_samples=num_samples + (previous.num_samples if previous else 0),
        mode=mode,
        space=space,
        gamma=gamma,
        base_model_id=base_model_id,
        scale=scale,
        adapter_id=adapter_id,
        recipe=dict(recipe or {}),
    )


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors header: 8-byte little-endian length, then JSON whose "__metadata__" is str→str.
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return dict(header.get("__metadata__", {}))
