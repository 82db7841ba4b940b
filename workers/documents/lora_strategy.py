"""`lora`: a plain LoRA trained on the document's chunks by next-token loss — the weight-changing
baseline (what continuum's batch cycle does with feedback, applied to text). `sparse_memory` and `ttt`
are this with fewer parameters allowed to move."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.documents.strategy import DocumentStrategy, chunk_rows, folder_size


class LoraStrategy(DocumentStrategy):
    name = "lora"

    def __init__(self, model: Any, tokenizer: Any, epochs: int = 8, learning_rate: float = 1e-3, rank: int = 16,
                 alpha: int = 32, target_modules: Sequence[str] = ("auto",), max_length: int = 256, seed: int = 0,
                 **options: Any):
        super().__init__(model, tokenizer, **options)
        self.epochs, self.learning_rate, self.max_length, self.seed = epochs, learning_rate, max_length, seed
        self.rank, self.alpha = rank, alpha
        self.model = self.attach(model, tuple(target_modules))

    def attach(self, model: Any, target_modules: tuple[str, ...]) -> Any:
        import torch

        from workers.learning.lora import LoraSettings, attach_adapter

        torch.manual_seed(self.seed)
        return attach_adapter(model, LoraSettings(r=self.rank, alpha=self.alpha, dropout=0.0,
                                                  target_modules=target_modules).resolved_for(model))

    def train(self, chunks: Sequence[str]) -> dict[str, Any]:
        from workers.learning.training import TrainConfig, fit

        config = TrainConfig(learning_rate=self.learning_rate, epochs=self.epochs, batch_size=8,
                             max_length=self.max_length, seed=self.seed, warmup_steps=0)
        started = time.perf_counter()
        result = fit(self.model, self.tokenizer, chunk_rows(chunks), config)
        return {"steps": result.steps, "first_loss": result.loss_curve[0] if result.loss_curve else None,
                "final_loss": result.final_loss, "seconds": round(time.perf_counter() - started, 2)}

    def learn(self, chunks: Sequence[str]) -> dict[str, Any]:
        return self.train(chunks)

    def metadata(self) -> dict[str, Any]:
        return {"strategy": self.name, "epochs": self.epochs, "learning_rate": self.learning_rate}

    def save(self, folder: Path) -> int:
        from workers.learning.lora import save_adapter_dir

        save_adapter_dir(self.model, Path(folder), self.metadata())
        return folder_size(folder)
