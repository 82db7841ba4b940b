"""Rows → token ids, with the loss mask: the prompt is context, only the response is learned.

A row is an exported sample: ``{"prompt", "response", "messages", "weight", "feedback", "unlikelihood"}``.
The prompt part is the tokenizer's chat template over the conversation up to the last user turn with
``add_generation_prompt=True`` — exactly what stock ``apply_chat_template`` produces at inference — and
the response part is the assistant text plus EOS, so the model learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # labels with this value carry no loss (torch cross_entropy's ignore_index)


@dataclass(frozen=True)
class EncodedSample:
    """One training sample; `labels` is `IGNORE_INDEX` on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    weight: float
    unlikelihood: bool
    prompt_len: int  # tokens before the response; position prompt_len - 1 predicts its first token

    def __len__(self) -> int:
        return len(self.input_ids)


def conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat turns before the response: `messages` cut after its last user turn, else the prompt."""
    messages = row.get("messages")
    if messages:
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is not None:
            return [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]
    return [{"role": "user", "content": row["prompt"]}]


def prompt_text(row: dict[str, Any], tokenizer: Any) -> str:
    """The prompt as text, ending where the assistant's answer begins."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation(row), tokenize=False, add_generation_prompt=True)
    # Base models without a template: a plain "prompt\n" is the least surprising format.
    return "\n".join(m["content"] for m in conversation(row)) + "\n"


def prompt_ids(row: dict[str, Any], tokenizer: Any) -> list[int]:
    return tokenizer.encode(prompt_text(row, tokenizer), add_special_tokens=False)


def encode_rows(rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> list[EncodedSample]:
    """Tokenise rows (batched), truncating the prompt from the left so the response survives."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (one prompt token and one response token)")
    prompts = tokenizer([prompt_text(r, tokenizer) for r in rows], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    samples = []
    for row, p_ids, r_ids in zip(rows, prompts, responses, strict=True):
        r_ids = list(r_ids) + [eos]
        r_ids = r_ids[: max_length - 1]  # an over-long response keeps its start and >= 1 prompt token
        p_ids = list(p_ids)[-(max_length - len(r_ids)):]
        samples.append(
            EncodedSample(
                input_ids=p_ids + r_ids,
                labels=[IGNORE_INDEX] * len(p_ids) + r_ids,
                weight=float(row.get("weight", 1.0)),
                unlikelihood=bool(row.get("unlikelihood", False)),
                prompt_len=len(p_ids),
            )
        )
    return samples
