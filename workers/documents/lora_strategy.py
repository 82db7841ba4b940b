"""`lora`: a plain LoRA trained on what the document is learnt as (`views.py`: its chunks as text and
its names as questions answered with its sentences) — the weight-changing baseline. `sparse_memory`
and `ttt` are this with fewer parameters allowed to move.

Every weight-changing strategy trains with the batch cycle's base protection (`protect=True`): half
the rows are the base model's own answers to general prompts, held by a KL to the base
(`workers.learning.continual.prepare_cycle`, the `default` recipe's setting), so learning a document
does not cost the model its general answers. `protect=False` and `views=False` give the bare versions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.documents.strategy import DocumentStrategy, folder_size


class LoraStrategy(DocumentStrategy):
    name = "lora"

    def __init__(self, model: Any, tokenizer: Any, epochs: int = 8, learning_rate: float = 1e-3, rank: int = 16,
                 alpha: int = 32, target_modules: Sequence[str] = ("auto",), max_length: int = 256, seed: int = 0,
                 views: bool = True, questions: bool = True, protect: bool = True,
                 base_rows: Sequence[dict[str, Any]] | None = None, **options: Any):
        super().__init__(model, tokenizer, **options)
        self.epochs, self.learning_rate, self.max_length, self.seed = epochs, learning_rate, max_length, seed
        self.rank, self.alpha, self.views, self.protect = rank, alpha, views, protect
        self.questions = questions
        self.base_rows = list(base_rows) if base_rows is not None else None
        if protect and self.base_rows is None:  # the base's own answers, before any adapter exists
            from workers.learning.self_replay import default_prompts, self_replay_rows

            self.base_rows = self_replay_rows(model, tokenizer, default_prompts())
        self.model = self.attach(model, tuple(target_modules))

    def attach(self, model: Any, target_modules: tuple[str, ...]) -> Any:
        import torch

        from workers.learning.lora import LoraSettings, attach_adapter

        torch.manual_seed(self.seed)
        return attach_adapter(model, LoraSettings(r=self.rank, alpha=self.alpha, dropout=0.0,
                                                  target_modules=target_modules).resolved_for(model))

    def train(self, chunks: Sequence[str]) -> dict[str, Any]:
        from workers.documents.views import document_rows
        from workers.learning.continual import ContinualConfig, prepare_cycle
        from workers.learning.training import TrainConfig, fit

        config = TrainConfig(learning_rate=self.learning_rate, epochs=self.epochs, batch_size=8,
                             max_length=self.max_length, seed=self.seed, warmup_steps=0)
        rows = document_rows(chunks, self.views, self.questions)
        regularizers: list[Any] = []
        if self.protect and self.base_rows:
            plan = prepare_cycle(self.model, rows, ContinualConfig(self_replay_share=0.5, self_replay_weight=0.0,
                                                                   self_replay_kl=1.0),
                                 epochs=self.epochs, base_rows=self.base_rows)
            rows, regularizers = plan.rows, plan.regularizers
        started = time.perf_counter()
        result = fit(self.model, self.tokenizer, rows, config, regularizers)
        return {"steps": result.steps, "first_loss": result.loss_curve[0] if result.loss_curve else None,
                "final_loss": result.final_loss, "seconds": round(time.perf_counter() - started, 2)}

    def learn(self, chunks: Sequence[str]) -> dict[str, Any]:
        return self.train(chunks)

    def metadata(self) -> dict[str, Any]:
        return {"strategy": self.name, "epochs": self.epochs, "learning_rate": self.learning_rate,
                "views": self.views, "questions": self.questions, "protect": self.protect}

    def save(self, folder: Path) -> int:
        from workers.learning.lora import save_adapter_dir

        save_adapter_dir(self.model, Path(folder), self.metadata())
        return folder_size(folder)
