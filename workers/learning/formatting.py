"""Rows → token ids, with the loss mask: the prompt is context, only the assistant's answer is learned.

A row is an exported sample: ``{"prompt", "response", "messages", "weight", "feedback", "unlikelihood"}``,
or a document chunk ``{"text", …}`` (`workers/ingest`), learned as plain text with no template.

With a chat template the *whole* conversation, answer included, is rendered by the model's own
``apply_chat_template``, and the loss covers exactly the assistant span: the answer text and the
template's end-of-turn token. That token is what the model must learn to stop on, and it is often not
EOS (SmolLM2 and Qwen close a turn with ``<|im_end|>``, Llama 3 with ``<|eot_id|>``, Gemma with
``<end_of_turn>``). Whatever the template adds around the answer (a default system prompt, the
newline after the end-of-turn token) stays out of the loss.

The prompt part is token-for-token ``apply_chat_template(turns, add_generation_prompt=True)`` — what
the model sees at inference — because it is tokenised on its own and the answer span after it.
Models without a template use a plain ``prompt\\n`` + answer + EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # labels with this value carry no loss (torch cross_entropy's ignore_index)
_SENTINEL = "\u2063continuum-answer\u2063"  # invisible separators: no template or answer contains it


@dataclass(frozen=True)
class EncodedSample:
    """One training sample; `labels` is `IGNORE_INDEX` on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    weight: float
    unlikelihood: bool
    prompt_len: int  # tokens before the response; position prompt_len - 1 predicts its first token
    self_replay: bool = False  # the base model's own answer (`self_replay.py`): a KL-to-base target

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


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(row: dict[str, Any], tokenizer: Any) -> str:
    """The prompt as text, ending where the assistant's answer begins."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(conversation(row), tokenize=False, add_generation_prompt=True)
    # Base models without a template: a plain "prompt\n" is the least surprising format.
    return "\n".join(m["content"] for m in conversation(row)) + "\n"


def prompt_ids(row: dict[str, Any], tokenizer: Any) -> list[int]:
    return tokenizer.encode(prompt_text(row, tokenizer), add_special_tokens=False)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the template's closing special token, then EOS.

    Found by rendering a one-answer conversation and taking the first special token after the answer,
    so any template works without a per-model table. Cached on the tokenizer (per template and EOS).
    """
    # Keyed by template and EOS: a tokenizer whose template is swapped must not keep stale stops.
    key = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id)
    cached = getattr(tokenizer, "_continuum_end_of_turn", None)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    ids: list[int] = []
    closing = _template_closing_text(tokenizer)
    if closing:
        special = set(tokenizer.all_special_ids) | {
            i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)
        }
        first = next((i for i in tokenizer.encode(closing, add_special_tokens=False) if i in special), None)
        if first is not None:
            ids.append(first)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    try:
        tokenizer._continuum_end_of_turn = (key, tuple(ids))
    except AttributeError:  # a tokenizer that refuses attributes is just not cached
        pass
    return ids


def _template_closing_text(tokenizer: Any) -> str:
    """What the template writes right after an assistant answer ('' without a template)."""
    if not has_chat_template(tokenizer):
        return ""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=False)
    return rendered.split(_SENTINEL, 1)[1] if _SENTINEL in rendered else ""


def answer_text(row: dict[str, Any], tokenizer: Any, prompt: str) -> tuple[str, bool]:
    """The text after `prompt` that the loss covers, and whether it already ends the turn.

    The full conversation is rendered with the template; when it extends the generation prompt (every
    ordinary template), the answer span is the rest, cut after the end-of-turn token. A template whose
    history rendering differs from its generation prompt falls back to prompt + answer + end-of-turn.
    """
    if not has_chat_template(tokenizer):
        return row["response"], False
    turns = conversation(row) + [{"role": "assistant", "content": row["response"]}]
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    if full.startswith(prompt) and row["response"] in full[len(prompt):]:
        return full[len(prompt):], True
    return row["response"], False


def encode_rows(rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> list[EncodedSample]:
    """Tokenise rows (batched), truncating the prompt from the left so the response survives."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (one prompt token and one response token)")
    stops = end_of_turn_ids(tokenizer)
    if not stops:
        raise ValueError("the tokenizer has neither an end-of-turn nor an EOS token: set its eos_token")
    if any(r.get("text") for r in rows):  # document chunks: plain language modelling, no template
        plain = {i: _encode_text(r, tokenizer, max_length) for i, r in enumerate(rows) if r.get("text")}
        chat = [r for r in rows if not r.get("text")]
        encoded = iter(encode_rows(chat, tokenizer, max_length) if chat else [])
        return [plain[i] if i in plain else next(encoded) for i in range(len(rows))]
    texts = [prompt_text(r, tokenizer) for r in rows]
    answers = [answer_text(r, tokenizer, p) for r, p in zip(rows, texts, strict=True)]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    responses = tokenizer([a for a, _ in answers], add_special_tokens=False)["input_ids"]
    samples = []
    for row, p_ids, span_ids, (_, templated) in zip(rows, prompts, responses, answers, strict=True):
        r_ids = _through_end_of_turn(list(span_ids), stops) if templated else list(span_ids) + [stops[0]]
        if r_ids is None:  # the template wrote no end-of-turn token after the answer: teach the stop
            r_ids = tokenizer.encode(row["response"], add_special_tokens=False) + [stops[0]]
        r_ids = r_ids[: max_length - 1]  # an over-long response keeps its start and >= 1 prompt token
        p_ids = list(p_ids)[-(max_length - len(r_ids)):]
        unlikely = bool(row.get("unlikelihood", False))
        # A disliked answer's *content* is what the user disliked, not that it ended: pushing the
        # end-of-turn token down would teach the model to stop ending its answers.
        labels = [IGNORE_INDEX if unlikely and t in stops else t for t in r_ids]
        samples.append(
            EncodedSample(
                input_ids=p_ids + r_ids,
                labels=[IGNORE_INDEX] * len(p_ids) + labels,
                weight=float(row.get("weight", 1.0)),
                unlikelihood=unlikely,
                prompt_len=len(p_ids),
                self_replay=bool(row.get("self_replay", False)),
            )
        )
    return samples


def _encode_text(row: dict[str, Any], tokenizer: Any, max_length: int) -> EncodedSample:
    """A document chunk (`{"text": …}`, `workers/ingest`): every token after the first is learned, as in
    pretraining; no chat template and no end-of-turn, because a document is not an answer."""
    ids = tokenizer.encode(row["text"], add_special_tokens=False)[:max_length]
    if len(ids) < 2:
        ids = ids + [tokenizer.eos_token_id]
    return EncodedSample(input_ids=ids, labels=[IGNORE_INDEX] + ids[1:], weight=float(row.get("weight", 1.0)),
                         unlikelihood=False, prompt_len=1)


def _through_end_of_turn(ids: list[int], stops: list[int]) -> list[int] | None:
    """`ids` cut just after the first end-of-turn token (None if there is none)."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return None
