"""`ttt`: test-time training of the MLPs in the last quarter of the layers, blended with the frozen ones.

The seed system keeps a trainable copy of each of those MLPs and outputs `alpha · frozen + (1 − alpha)
· trainable`. With the copy written as frozen + Δ that is `frozen + (1 − alpha) · Δ`, so here Δ is a
LoRA on `gate_proj`, `up_proj` and `down_proj` of those layers, and the blend is the LoRA's scale times
(1 − alpha). Alpha starts at `alpha_start` (0.95: new knowledge enters gently) and drops by
`alpha_decay` after each document learnt, to `alpha_floor`, so what has been learnt counts for more as
documents accumulate. Training runs with the blend in place.

The artifact is a stock PEFT adapter: the blend is folded into the saved `lora_alpha` (PEFT scales by
lora_alpha / r), so `PeftModel.from_pretrained` reproduces the blended model exactly; the alpha state
is in `continuum_metadata.json` for a learner that continues.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.documents.lora_strategy import LoraStrategy
from workers.documents.strategy import folder_size

MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


def last_quarter(layers: int) -> list[int]:
    return list(range(layers - max(1, layers // 4), layers))


def ttt_lora_config(model: Any, rank: int, lora_alpha: float) -> Any:
    """A LoRA on the MLPs of the last quarter of the layers (stock PEFT `layers_to_transform`)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=list(MLP_MODULES),
                      layers_to_transform=last_quarter(model.config.num_hidden_layers), task_type="CAUSAL_LM")


def set_blend(model: Any, lora_alpha: float, rank: int, blend: float) -> None:
    """Set every LoRA layer's scale to (lora_alpha / r) · (1 − blend): the frozen/trainable blend."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:
                module.scaling[name] = (lora_alpha / rank) * (1 - blend)


def next_blend(blend: float, decay: float, floor: float) -> float:
    """Alpha after one more document (or cycle) learnt."""
    return max(floor, blend - decay)


def fold_blend(folder: Path, lora_alpha: float, blend: float) -> None:
    """Write the blend where stock PEFT reads the scale: lora_alpha · (1 − blend) in adapter_config.json."""
    config_path = Path(folder) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_alpha"] = lora_alpha * (1 - blend)
    config_path.write_text(json.dumps(config, indent=2))


class TTTStrategy(LoraStrategy):
    name = "ttt"

    def __init__(self, model: Any, tokenizer: Any, alpha_start: float = 0.95, alpha_decay: float = 0.05,
                 alpha_floor: float = 0.5, **options: Any):
        if not 0 <= alpha_floor <= alpha_start <= 1:
            raise ValueError(f"ttt needs 0 <= alpha_floor ({alpha_floor}) <= alpha_start ({alpha_start}) <= 1")
        self.blend = alpha_start
        self.alpha_decay, self.alpha_floor = alpha_decay, alpha_floor
        self.documents = 0
        super().__init__(model, tokenizer, **options)

    def attach(self, model: Any, target_modules: tuple[str, ...]) -> Any:
        import torch
        from peft import get_peft_model

        self.layers = last_quarter(model.config.num_hidden_layers)
        torch.manual_seed(self.seed)
        peft_model = get_peft_model(model, ttt_lora_config(model, self.rank, self.alpha))
        set_blend(peft_model, self.alpha, self.rank, self.blend)
        return peft_model

    def learn(self, chunks: Sequence[str]) -> dict[str, Any]:
        blend = self.blend
        report = self.train(chunks)
        self.documents += 1
        self.blend = next_blend(self.blend, self.alpha_decay, self.alpha_floor)
        set_blend(self.model, self.alpha, self.rank, self.blend)
        return {**report, "alpha_while_learning": round(blend, 4), "alpha_now": round(self.blend, 4),
                "layers": self.layers}

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "alpha": self.blend, "alpha_decay": self.alpha_decay,
                "alpha_floor": self.alpha_floor, "documents": self.documents, "layers": self.layers}

    def save(self, folder: Path) -> int:
        super().save(folder)
        fold_blend(Path(folder), self.alpha, self.blend)
        return folder_size(folder)
