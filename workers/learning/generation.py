"""Batched greedy decoding of answers, for evaluation (exact match, general questions) and the demo.

Prompts are formatted exactly as in training (`formatting.prompt_ids`), left-padded so every row's
next token sits in the last column, and decoded in batches with the KV cache. Decoding stops at the
template's end-of-turn token as well as EOS (SmolLM2 ends a turn with `<|im_end|>`; a model that
never emits EOS there would otherwise ramble until the token budget runs out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.learning.formatting import end_of_turn_ids, prompt_ids

MIN_NEW_TOKENS = 32  # the budget when no reference answers tell us better
REFERENCE_MARGIN = 8  # extra tokens past the longest reference: an over-long answer must show as wrong


def reference_budget(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Enough new tokens to reproduce the longest reference answer (plus end-of-turn and a margin)."""
    responses = [r["response"] for r in rows if r.get("response")]
    if not responses:
        return MIN_NEW_TOKENS
    longest = max(len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"])
    return max(MIN_NEW_TOKENS, longest + 1 + REFERENCE_MARGIN)


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    logits_processor: Any = None,
) -> list[str]:
    """Greedy answers for `rows` (their prompt/messages), decoded without special tokens and stripped.

    `max_new_tokens=None` generates enough for the longest reference `response` in `rows` (so exact
    match never compares a cut answer), or `MIN_NEW_TOKENS` when the rows carry none.
    `logits_processor` (a transformers `LogitsProcessorList`) is passed to `generate` (retrieval's bias).
    """
    if not rows:
        return []
    if max_new_tokens is None:
        max_new_tokens = reference_budget(tokenizer, rows)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = end_of_turn_ids(tokenizer)
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
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=stops,
                **({"logits_processor": logits_processor} if logits_processor is not None else {}),
            )  # (B, T + new)
            for row, i in enumerate(chunk):
                answers[i] = tokenizer.decode(_until_stop(output[row, width:].tolist(), stops),
                                              skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return answers


def _until_stop(ids: list[int], stops: Sequence[int]) -> list[int]:
    """New tokens up to (not including) the first stop token; rows that stopped early are padded after it."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i]
    return ids


def normalise(text: str) -> str:
    """Whitespace-insensitive form used by exact match (runs of spaces/newlines collapse, ends stripped)."""
    return " ".join(text.split())


def exact_match(answers: Sequence[str], rows: Sequence[dict[str, Any]]) -> float:
    """Share of answers equal to the row's whole response, up to whitespace."""
    if not rows:
        return 0.0
    hits = sum(normalise(a) == normalise(r["response"]) for a, r in zip(answers, rows, strict=True))
    return hits / len(rows)
