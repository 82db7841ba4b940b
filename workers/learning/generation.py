"""Batched greedy decoding of answers, for evaluation (exact match) and the demo.

Prompts are formatted exactly as in training (`formatting.prompt_ids`) and left-padded so every
row's next token sits in the last column; decoding stops at EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.learning.formatting import prompt_ids


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers for `rows` (their prompt/messages), decoded without special tokens and stripped."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [prompt_ids(row, tokenizer) for row in rows]
    # Longest first: batches of similar length waste less compute on padding.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T) left-padded
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, T)
            for row, i in enumerate(chunk):
                n = len(encoded[i])
                input_ids[row, width - n :] = torch.tensor(encoded[i], dtype=torch.long)
                attention_mask[row, width - n :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # (B, T + new)
            for row, i in enumerate(chunk):
                answers[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return answers


def exact_match(answers: Sequence[str], rows: Sequence[dict[str, Any]]) -> float:
    """Share of answers equal to the row's response (whitespace-stripped)."""
    if not rows:
        return 0.0
    hits = sum(a.strip() == r["response"].strip() for a, r in zip(answers, rows, strict=True))
    return hits / len(rows)
