"""General retention: does the adapted model still do what the base model did on things never taught?

Two probes, both against the *base* model (the same weights with the adapter switched off, so no
second copy of the model is loaded):

- **questions** with accepted answers (`workers.evaluate.anchors`): ``still_right`` is the share of the
  questions the base answers right that the adapted model still answers right. Questions the base gets
  wrong say nothing about what learning broke, so they are left out of the ratio.
- **prompts** without a reference: ``agreement`` is the share whose greedy answer is identical to the
  base's, and ``kl_drift`` the mean ``KL(p_base ‖ p_adapted)`` per token of the base's own answer.

The base's answers depend only on the base model, so a caller scoring many versions can compute them
once (`base_answers`) and pass them in.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from workers.learning.evaluation import EvalSettings
from workers.learning.fisher import batches_for_rows
from workers.learning.kl import response_token_kl

LOST_EXAMPLES = 10  # lost answers kept in the metrics: enough to see a pattern, small for a JSON row
Question = Mapping[str, Any]  # {"prompt": str, "answers": [str, ...]} (or "answer": str | list)


def accepted_answers(question: Question) -> list[str]:
    """The question's accepted answer strings (``answers`` or ``answer``, a string or a list)."""
    answers = question.get("answers", question.get("answer"))
    if isinstance(answers, str):
        return [answers]
    return [a for a in (answers or []) if isinstance(a, str) and a.strip()]


def is_right(answer: str, accepted: Sequence[str]) -> bool:
    """True when any accepted string occurs in `answer`, case-insensitively, starting at a word boundary.

    The left boundary keeps "7" from matching inside "17"; the right side is open so a stem such as
    "butterfl" accepts "butterfly" and "butterflies".
    """
    return any(re.search(r"(?<!\w)" + re.escape(a.strip()), answer, re.IGNORECASE) for a in accepted if a.strip())


@contextlib.contextmanager
def base_model(model: Any) -> Iterator[None]:
    """The base model: the adapter switched off (a model without an adapter is its own base)."""
    disable = getattr(model, "disable_adapter", None)
    with disable() if disable is not None else contextlib.nullcontext():
        yield


def _rows(prompts: Sequence[str], responses: Sequence[str] | None = None) -> list[dict[str, Any]]:
    responses = responses if responses is not None else [""] * len(prompts)
    return [{"prompt": p, "response": r, "messages": None, "weight": 1.0, "feedback": "thumbs_up"}
            for p, r in zip(prompts, responses, strict=True)]


def greedy(model: Any, tokenizer: Any, prompts: Sequence[str], settings: EvalSettings) -> list[str]:
    """Greedy answers to `prompts` (batched, `generation.generate_answers`)."""
    from workers.learning.generation import generate_answers

    if not prompts:
        return []
    return generate_answers(model, tokenizer, _rows(prompts), max_new_tokens=settings.max_new_tokens,
                            batch_size=settings.batch_size)


def compute_base_answers(model: Any, tokenizer: Any, questions: Sequence[Question], prompts: Sequence[str],
                         settings: EvalSettings = EvalSettings()) -> dict[str, list[str]]:
    """The base model's greedy answers: ``{"questions": [...], "prompts": [...]}`` (adapter disabled)."""
    with base_model(model):
        return {"questions": greedy(model, tokenizer, [q["prompt"] for q in questions], settings),
                "prompts": greedy(model, tokenizer, list(prompts), settings)}


@torch.no_grad()
def answer_kl(model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
              settings: EvalSettings = EvalSettings()) -> float:
    """Mean ``KL(p_base ‖ p_adapted)`` over the tokens of `answers` (the base's own) given `prompts`."""
    rows = [r for r in _rows(prompts, answers)]
    if not rows:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    try:
        for batch in batches_for_rows(rows, tokenizer, settings.batch_size, settings.max_length):
            inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
            labels = batch["labels"].to(device)
            adapted = model(**inputs).logits
            with base_model(model):
                base = model(**inputs).logits
            tokens = int((labels[:, 1:] != -100).sum())
            total += float(response_token_kl(base, adapted, labels)) * tokens
            count += tokens
    finally:
        model.train(was_training)
    return total / max(count, 1)


def score_general_retention(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    prompts: Sequence[str],
    base_answers: Mapping[str, Sequence[str]] | None = None,
    settings: EvalSettings = EvalSettings(),
) -> dict[str, Any]:
    """General retention of the adapted `model` against its base (see the module docstring).

    Returns ``still_right`` (None when the base answers no question right), ``base_right`` (questions
    the base answers right), ``lost`` (up to `LOST_EXAMPLES` questions no longer right, with the new
    answer), ``agreement``, ``kl_drift`` and the ``questions``/``prompts`` counts.
    `base_answers` is `compute_base_answers`' result; computed here (adapter disabled) when None.
    """
    questions = list(questions)
    prompts = list(prompts)
    if base_answers is None:
        base_answers = compute_base_answers(model, tokenizer, questions, prompts, settings)
    if len(base_answers["questions"]) != len(questions) or len(base_answers["prompts"]) != len(prompts):
        raise ValueError("base_answers do not match the questions/prompts given: recompute them for this set")
    accepted = [accepted_answers(q) for q in questions]
    base_ok = [is_right(a, acc) for a, acc in zip(base_answers["questions"], accepted, strict=True)]
    asked = [q["prompt"] for q, ok in zip(questions, base_ok, strict=True) if ok]
    now = greedy(model, tokenizer, asked, settings)
    kept = [is_right(a, acc) for a, acc in zip(now, [c for c, ok in zip(accepted, base_ok, strict=True) if ok],
                                               strict=True)]
    still = sum(kept)
    # What went wrong reads better than a ratio: a few of the lost answers, as the model gave them.
    lost = [{"prompt": p, "answer": a} for p, a, ok in zip(asked, now, kept, strict=True) if not ok][:LOST_EXAMPLES]
    answers = greedy(model, tokenizer, prompts, settings)
    agree = sum(a.strip() == b.strip() for a, b in zip(answers, base_answers["prompts"], strict=True))
    return {
        "still_right": still / len(asked) if asked else None,
        "base_right": len(asked),
        "lost": lost,
        "agreement": agree / len(prompts) if prompts else None,
        "kl_drift": answer_kl(model, tokenizer, prompts, base_answers["prompts"], settings) if prompts else None,
        "questions": len(questions),
        "prompts": len(prompts),
    }
