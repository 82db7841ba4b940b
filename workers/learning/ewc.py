"""Elastic weight consolidation for a continued LoRA adapter: ``(λ/2) Σ F (θ − θ*)²``.

Two spaces, chosen by `space`:

- ``"lora"``: θ are the LoRA matrices A and B themselves, θ* the parent adapter's, F their Fisher.
  This is the textbook form, but it is parametrisation-bound: the same update ΔW = B·A can be reached
  by moving A and B in many ways, and on a fresh adapter (B = 0) the Fisher of every A is exactly 0.
- ``"delta_w"`` (default): θ is the effective weight change ΔW = s·B·A of every LoRA layer, θ* the
  parent's ΔW, F the diagonal Fisher of the wrapped base weight (`fisher.compute_fisher(space=
  "delta_w")`). The Fisher of W is the same whether B is 0 or not, so there is no zero-Fisher trap,
  and the penalty measures the change of the function, not of one factorisation of it.
  With ``fisher=None`` it is plain L2 on the change of ΔW (F = 1), which measured about as good.

A fresh adapter (first cycle) has no old-task Fisher: `continual.prepare_cycle` leaves EWC off (the
adapter has learnt nothing to anchor yet) unless `continual.first_cycle_fisher` supplies the base
weights' ΔW-space Fisher on anchor rows, which anchors ΔW near 0 where the base's behaviour needs it.
The Fisher is put on a fixed scale once, so that λ means the same thing for Fisher-weighted and plain
L2 and from cycle to cycle: a stored `FisherArtifact` carries the scale fixed from the first Fisher of
its online chain (``1 / mean(F_first)``) and EWC multiplies by it; a bare Fisher dict (one cycle's,
never folded) is scaled to mean 1. EWC never re-normalises an accumulated Fisher at use, which would
cancel online EWC's accumulation.
The DEFAULT recipe uses LoRA space (see `continual.py`): with the Fisher taken at the end of each
cycle, at the trained adapter, the zero-Fisher trap does not arise, and it is the cheaper of the two.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from common.errors import ValidationError
from workers.learning.fisher import lora_wrapped_layers
from workers.learning.fisher_artifact import FisherArtifact, unit_mean_scale

EwcSpace = Literal["lora", "delta_w"]


def _active_adapter(layer: nn.Module) -> str:
    active = getattr(layer, "active_adapters", None) or ["default"]
    return active[0]


def effective_delta_w(layer: nn.Module, adapter: str | None = None) -> torch.Tensor:
    """ΔW = scaling · B · A of one PEFT LoRA layer, shaped like the wrapped weight (out, in)."""
    name = adapter or _active_adapter(layer)
    a = layer.lora_A[name].weight
    b = layer.lora_B[name].weight
    return (b @ a) * layer.scaling[name]


def snapshot_delta_w(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every LoRA layer's current ΔW (detached), by wrapper module name: the anchors θ*."""
    with torch.no_grad():
        return {name: effective_delta_w(layer).detach().clone() for name, layer in lora_wrapped_layers(model).items()}


def snapshot_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter's current value (detached), by full name: the anchors θ*."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def scale_fisher(fisher: Mapping[str, torch.Tensor], scale: float | None) -> dict[str, torch.Tensor]:
    """``scale · F``; with ``scale=None`` the scale that gives mean 1 (an all-zero Fisher stays zero)."""
    if scale is None:
        scale = unit_mean_scale(fisher)
    if scale is None:
        return {k: torch.zeros_like(v) for k, v in fisher.items()}
    return {k: v * scale for k, v in fisher.items()}


class EWC:
    """The EWC penalty as a `Regularizer` for `training.fit`.

    Build it with `EWC.from_model` at the start of a cycle, when the model holds the parent adapter:
    the current values become θ*. `last_penalty` keeps the latest penalty (λ/2 included) for logging;
    `fit` logs its mean and the penalty/task-loss ratio.
    """

    name = "ewc"
    needs_logits = False  # the penalty reads weights only, so fit may trim the LM head to response positions

    def __init__(
        self,
        anchors: Mapping[str, torch.Tensor],
        fisher: Mapping[str, torch.Tensor] | FisherArtifact | None,
        strength: float,
        space: EwcSpace = "delta_w",
        scale: float | None = None,
    ):
        if space not in ("lora", "delta_w"):
            raise ValidationError(f"unknown EWC space {space!r}; choose 'lora' or 'delta_w'")
        if strength < 0:
            raise ValidationError(f"EWC strength must be >= 0, got {strength}")
        self.space = space
        self.strength = float(strength)
        self.anchors = {k: v.detach().float().clone() for k, v in anchors.items()}
        if isinstance(fisher, FisherArtifact):
            # The scale fixed once for the artifact's online chain: accumulation across cycles is kept.
            scale = fisher.scale if scale is None else scale
            fisher = fisher.values
        if fisher is None:
            self.fisher = {k: torch.ones_like(v) for k, v in self.anchors.items()}
        else:
            missing = set(self.anchors) - set(fisher)
            if missing:
                raise ValidationError(
                    f"Fisher has no entry for {len(missing)} anchored tensors (e.g. {sorted(missing)[0]}); "
                    f"recompute the Fisher in space {space!r} for this adapter"
                )
            chosen = {k: fisher[k].detach().float() for k in self.anchors}
            self.fisher = scale_fisher(chosen, scale)
        self.last_penalty: torch.Tensor | float = 0.0
        self._device_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._flat_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._resolved: tuple[weakref.ref, list[Any]] | None = None

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        fisher: Mapping[str, torch.Tensor] | FisherArtifact | None,
        strength: float,
        space: EwcSpace = "delta_w",
        scale: float | None = None,
    ) -> EWC:
        """Anchor to the model's current adapter (the parent at the start of a cycle).

        `fisher`: a stored `FisherArtifact` (weighted by its own stored scale), a bare Fisher dict
        (scaled to mean 1, or by `scale`), or None for plain L2 (F = 1).
        """
        anchors = snapshot_delta_w(model) if space == "delta_w" else snapshot_lora(model)
        return cls(anchors, fisher, strength, space=space, scale=scale)

    def _targets(self, model: nn.Module) -> list[Any]:
        """The anchored parameters (LoRA space) or LoRA layers (ΔW space) of `model`, looked up once."""
        if self._resolved is None or self._resolved[0]() is not model:
            if self.space == "delta_w":
                layers = lora_wrapped_layers(model)
                found = [layers.get(name) for name in self.anchors]
            else:
                params = dict(model.named_parameters())
                found = [params.get(name) for name in self.anchors]
            if not found or any(t is None for t in found):
                raise ValidationError("EWC anchors name tensors this model lacks; build EWC from the model being trained")
            self._resolved = (weakref.ref(model), found)
        return self._resolved[1]

    def _flat(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchors and Fisher as one flat vector each (LoRA space): a handful of ops per step, not 6 per tensor."""
        if self._flat_cache is None or self._flat_cache[0].device != device:
            anchor = torch.cat([v.reshape(-1) for v in self.anchors.values()]).to(device)
            weight = torch.cat([v.reshape(-1) for v in self.fisher.values()]).to(device)
            self._flat_cache = (anchor, weight)
        return self._flat_cache

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """(λ/2) Σ F (θ − θ*)² for the model's current adapter (differentiable)."""
        targets = self._targets(model)
        if self.space == "lora":
            current = torch.cat([p.reshape(-1).float() for p in targets])
            anchor, weight = self._flat(current.device)
            diff = current - anchor
            return 0.5 * self.strength * torch.dot(weight * diff, diff)
        total = None
        for name, layer in zip(self.anchors, targets, strict=True):
            adapter = _active_adapter(layer)
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            anchor, weight = self._on_device(name, a.device)
            # ΔW − ΔW* in one fused op: −ΔW* + s·(B @ A)
            diff = torch.addmm(anchor, b.float(), a.float(), beta=-1.0, alpha=float(layer.scaling[adapter]))
            term = torch.dot((weight * diff).reshape(-1), diff.reshape(-1))
            total = term if total is None else total + term
        return 0.5 * self.strength * total

    def _on_device(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._device_cache.get(name)
        if cached is None or cached[0].device != device:
            cached = (self.anchors[name].to(device), self.fisher[name].to(device))
            self._device_cache[name] = cached
        return cached

    def loss(self, model: Any, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        value = self.penalty(model)
        self.last_penalty = value.detach()  # a tensor: no device sync per step
        return value

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"anchor::{k}": v for k, v in self.anchors.items()}
        state.update({f"fisher::{k}": v for k, v in self.fisher.items()})
        state["strength"] = torch.tensor(self.strength, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.anchors = {k.removeprefix("anchor::"): v.float() for k, v in state.items() if k.startswith("anchor::")}
        self.fisher = {k.removeprefix("fisher::"): v.float() for k, v in state.items() if k.startswith("fisher::")}
        if "strength" in state:
            self.strength = float(state["strength"])
        self._device_cache.clear()
        self._flat_cache = None
        self._resolved = None
