"""One interface for every way of teaching a model documents: `learn(chunks)`, then `answer(questions)`.

A strategy owns a base model and its tokenizer. Weight-changing strategies (`lora`, `sparse_memory`,
`ttt`) train an adapter on the document's chunks, as plain text (the chunk rows `workers/ingest`
writes); `retrieval` changes no weight and answers from the chunks it finds. `save(folder)` writes the
strategy's artifact — safetensors and JSON only — and returns its size; the comparison harness
(`workers/documents/compare.py`) reports that size beside accuracy, retention and time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def chunk_rows(chunks: Sequence[str]) -> list[dict[str, Any]]:
    """Chunks as training rows (plain-text language modelling, `formatting._encode_text`)."""
    return [{"text": c, "prompt": "", "response": "", "weight": 1.0, "feedback": "thumbs_up"} for c in chunks]


def answer_matches(answer: str, gold: str) -> bool:
    """Right when the gold answer occurs in the model's answer (case-insensitive, from a word boundary):
    the general-retention rule (`general_retention.is_right`), so both figures read answers alike."""
    from workers.learning.general_retention import is_right

    return is_right(answer, [gold])


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


class DocumentStrategy(ABC):
    """Teach `model` documents; answer questions about them."""

    name: str = ""
    changes_weights: bool = True

    def __init__(self, model: Any, tokenizer: Any, **options: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.notes: list[str] = []

    @abstractmethod
    def learn(self, chunks: Sequence[str]) -> dict[str, Any]:
        """Learn the chunks of one or more documents; returns what it did (steps, losses, units…)."""

    def answer(self, questions: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        from workers.learning.generation import generate_answers

        return generate_answers(self.model, self.tokenizer, [{"prompt": q} for q in questions], max_new_tokens)

    @abstractmethod
    def save(self, folder: Path) -> int:
        """Write the artifact under `folder` (safetensors / JSON only); returns its size in bytes."""
