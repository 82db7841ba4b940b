"""The stored Fisher: safetensors tensors plus str→str metadata (samples, mode, space, γ, base model id).

Written by the cycle that computed it and read by the next cycle's EWC; never pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from common.errors import ValidationError


@dataclass
class FisherArtifact:
    """A Fisher diagonal plus what produced it; stored as safetensors (metadata is str→str)."""

    values: dict[str, torch.Tensor]
    num_samples: int
    mode: str
    space: str = "lora"
    gamma: float = 1.0
    base_model_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        return {
            "format": "continuum.fisher.v1",
            "num_samples": str(self.num_samples),
            "mode": self.mode,
            "space": self.space,
            "gamma": repr(float(self.gamma)),
            "base_model_id": self.base_model_id,
            "extra": json.dumps(self.extra, sort_keys=True),
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
        )

    def save(self, path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> FisherArtifact:
        with open(path, "rb") as fh:
            return cls.from_bytes(fh.read())


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors header: 8-byte little-endian length, then JSON whose "__metadata__" is str→str.
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return dict(header.get("__metadata__", {}))
