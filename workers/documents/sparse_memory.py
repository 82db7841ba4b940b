"""`sparse_memory`: only the MLP units a document is *about* may change (sparse memory finetuning, after
Lin et al. 2025, on MLP units rather than memory-layer slots).

**Units.** In every decoder layer, unit j of the MLP is the j-th input of `down_proj` (the gated
activation). For a text, a unit is *active* when its mean |activation| over the text's tokens is in the
top `active_fraction` of that layer's units.

**Calibration** (`UnitStatistics`): over a background corpus of general text (`background.py`, plus a
user folder), each unit's document frequency — in how many background texts it is active. Frequent
everywhere = general-purpose. The statistics are an artifact (safetensors + JSON) like the Fisher.

**Gate.** For a new document: TF = the share of its chunks in which a unit is active; IDF = log((1 + N)
/ (1 + df)) + 1 over the N background texts; the `top_units` units per layer by TF·IDF are chosen. A
LoRA on `down_proj` — whose input columns *are* the units: column j is what unit j writes back into
the residual stream — is trained with every other column of its A matrix held at exactly zero (zeroed
once, its gradient masked). ΔW = B·A then has zero columns for every unchosen unit, so their weights
stay bit-identical to the base's, and a chosen unit's change reaches general text only as far as that
text activates the unit — which, chosen for being rare in general text, it seldom does. (Opening the
units' *input* rows instead, on gate/up_proj, forgot more on the tiny model: a changed unit can start
firing on general text.) The adapter is a stock PEFT LoRA (zero columns are just zeros).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ValidationError
from workers.documents.lora_strategy import LoraStrategy
from workers.documents.strategy import folder_size

_LAYER = re.compile(r"\.layers\.(\d+)\.mlp\.down_proj$")


def mlp_outputs(model: Any) -> dict[int, Any]:
    """layer index → its MLP's down_proj module (whose input is the units' activations); under PEFT,
    the LoRA-wrapped module (its input is the same)."""
    found = {}
    for name, module in model.named_modules():
        match = _LAYER.search(name)
        if match and hasattr(module, "weight"):
            found[int(match.group(1))] = module
    if not found:
        raise ValidationError("no `layers.N.mlp.down_proj` modules in this model: sparse_memory supports "
                              "Llama-style MLPs; learn with strategy lora on this architecture")
    return found


def unit_activity(model: Any, tokenizer: Any, texts: Sequence[str], active_fraction: float,
                  max_length: int = 256) -> dict[int, Any]:
    """layer → bool tensor (len(texts), units): which units are active for each text."""
    import torch

    modules = mlp_outputs(model)
    captured: dict[int, Any] = {}

    def hook(index: int):
        def grab(_module: Any, inputs: tuple) -> None:
            captured[index] = inputs[0].detach().abs().float().mean(dim=(0, 1))  # (units,)
        return grab

    handles = [module.register_forward_pre_hook(hook(i)) for i, module in modules.items()]
    rows: dict[int, list] = {i: [] for i in modules}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer.encode(text, add_special_tokens=False)[:max_length] or [tokenizer.eos_token_id]
                model(input_ids=torch.tensor([ids], device=next(model.parameters()).device))
                for i in modules:
                    values = captured[i]
                    keep = max(1, int(round(active_fraction * values.numel())))
                    active = torch.zeros_like(values, dtype=torch.bool)
                    active[values.topk(keep).indices] = True
                    rows[i].append(active.cpu())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {i: torch.stack(r) for i, r in rows.items()}


@dataclass
class UnitStatistics:
    """Per layer, how many background texts each unit is active in (the calibration artifact)."""

    document_frequency: dict[int, Any]  # layer → float tensor (units,)
    texts: int
    active_fraction: float

    @classmethod
    def calibrate(cls, model: Any, tokenizer: Any, texts: Sequence[str], active_fraction: float) -> "UnitStatistics":
        activity = unit_activity(model, tokenizer, texts, active_fraction)
        return cls({i: a.float().sum(0) for i, a in activity.items()}, len(texts), active_fraction)

    def idf(self, layer: int) -> Any:
        return ((1 + self.texts) / (1 + self.document_frequency[layer])).log() + 1

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"layer.{i}.df": t.contiguous() for i, t in self.document_frequency.items()},
                  str(folder / "unit_statistics.safetensors"))
        (folder / "unit_statistics.json").write_text(json.dumps({"texts": self.texts,
                                                                 "active_fraction": self.active_fraction}))

    @classmethod
    def load(cls, folder: Path) -> "UnitStatistics":
        from safetensors.torch import load_file

        meta = json.loads((folder / "unit_statistics.json").read_text())
        tensors = load_file(str(folder / "unit_statistics.safetensors"))
        return cls({int(k.split(".")[1]): v for k, v in tensors.items()}, meta["texts"], meta["active_fraction"])


def choose_units(statistics: UnitStatistics, document_activity: dict[int, Any], top_units: int) -> dict[int, Any]:
    """layer → sorted indices of the `top_units` units with the highest TF·IDF for the document."""
    import torch

    chosen = {}
    for layer, activity in document_activity.items():
        tf = activity.float().mean(0)
        score = tf * statistics.idf(layer)
        k = min(top_units, int((score > 0).sum()))
        chosen[layer] = score.topk(k).indices.sort().values if k else torch.zeros(0, dtype=torch.long)
    return chosen


def unit_columns(model: Any) -> dict[str, tuple[int, Any]]:
    """Trainable LoRA A parameters of `down_proj` (one column per unit): name → (layer, parameter)."""
    found = {}
    for name, parameter in model.named_parameters():
        match = re.search(r"\.layers\.(\d+)\.mlp\.down_proj\.lora_A\.", name)
        if match and parameter.requires_grad:
            found[name] = (int(match.group(1)), parameter)
    return found


def merge_units(open_units: dict[int, Any], new: dict[int, Any]) -> dict[int, Any]:
    """The union, per layer, of the units already open and a new document's."""
    import torch

    merged = dict(open_units)
    for layer, units in new.items():
        before = merged.get(layer, units.new_zeros(0))
        merged[layer] = torch.unique(torch.cat([before.to(units.device), units]))
    return merged


def units_from_json(units: dict[str, list[int]]) -> dict[int, Any]:
    import torch

    return {int(layer): torch.tensor(sorted(values), dtype=torch.long) for layer, values in units.items()}


def units_to_json(units: dict[int, Any]) -> dict[str, list[int]]:
    return {str(layer): [int(u) for u in values.tolist()] for layer, values in sorted(units.items())}


@contextmanager
def gated(model: Any, chosen: dict[int, Any]) -> Iterator[int]:
    """Inside: every closed unit's `down_proj` LoRA A column is exactly zero and gets no gradient, so
    training changes only the chosen units' weights. Yields the number of unit matrices gated."""
    import torch

    columns = unit_columns(model)
    if not columns:
        raise ValueError("no trainable `down_proj` LoRA: sparse_memory needs a LoRA on down_proj")
    handles = []
    try:
        for _name, (layer, parameter) in columns.items():
            mask = torch.zeros(1, parameter.shape[1], dtype=parameter.dtype, device=parameter.device)
            mask[:, chosen.get(layer, torch.zeros(0, dtype=torch.long)).to(parameter.device)] = 1
            with torch.no_grad():
                parameter.mul_(mask)  # closed columns exactly zero (a fresh A is random everywhere)
            handles.append(parameter.register_hook(lambda grad, m=mask: grad * m))
        yield len(columns)
    finally:
        for handle in handles:
            handle.remove()


def unit_share(model: Any, chosen: dict[int, Any]) -> dict[str, Any]:
    units = sum(int(u.numel()) for u in chosen.values())
    total = sum(int(m.weight.shape[1]) for m in mlp_outputs(model).values())
    return {"units_open": units, "units_total": total, "units_share": round(units / max(total, 1), 4)}


class SparseMemoryStrategy(LoraStrategy):
    name = "sparse_memory"

    def __init__(self, model: Any, tokenizer: Any, top_units: int = 64, active_fraction: float = 0.05,
                 background: Sequence[str] | None = None, statistics: UnitStatistics | None = None, **options: Any):
        from workers.documents.background import background_texts

        self.top_units, self.active_fraction = top_units, active_fraction
        # Calibrated on the base model, before any adapter exists.
        self.statistics = statistics or UnitStatistics.calibrate(model, tokenizer, background or background_texts(),
                                                                 active_fraction)
        self.chosen: dict[int, Any] = {}
        super().__init__(model, tokenizer, target_modules=("down_proj",), **options)

    def open_units(self, chunks: Sequence[str]) -> dict[int, Any]:
        """Choose the document's units (TF·IDF) and add them to those open; returns this document's."""
        activity = unit_activity(self.model, self.tokenizer, chunks, self.active_fraction)
        chosen = choose_units(self.statistics, activity, self.top_units)
        self.chosen = merge_units(self.chosen, chosen)  # a later document adds its units to those open
        return chosen

    def train_gated(self, chunks: Sequence[str]) -> dict[str, Any]:
        """Train with every closed unit's column held at exactly zero."""
        with gated(self.model, self.chosen):
            return self.train(chunks)

    def learn(self, chunks: Sequence[str]) -> dict[str, Any]:
        self.open_units(chunks)
        report = self.train_gated(chunks)
        return {**report, **unit_share(self.model, self.chosen)}

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "top_units": self.top_units, "active_fraction": self.active_fraction,
                "units": units_to_json(self.chosen), "background_texts": self.statistics.texts}

    def save(self, folder: Path) -> int:
        super().save(folder)
        self.statistics.save(Path(folder) / "calibration")
        return folder_size(folder)
