"""What a cycle taught and what it kept, as a JSON-ready dict the evaluation row stores.

- *Plasticity*: recall on the rows this cycle trained on — answer token accuracy under teacher forcing
  and exact match of greedy answers (for taught facts, recall *is* plasticity).
- *Holdout*: NLL (and token accuracy) on the new data's held-out rows: a generalisation signal.
- *Retention*: token accuracy on rows earlier cycles taught; with their accuracy right after they were
  taught ("before") this gives the forgetting ratio ``(before − after)/before`` and backward transfer.
- *KL drift*: mean ``KL(p_base ‖ p_adapted)`` on a fixed anchor prompt set (adapter switched off for
  the base, no second model).

Every set is cut to a bounded, deterministic sample (chosen by a hash of the row, so the same rows are
scored in every version and cost does not grow with history).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workers.learning.fisher import batches_for_rows

Row = dict[str, Any]


@dataclass(frozen=True)
class EvalSettings:
    """Sample caps and batching; the caps bound cost however long history grows."""

    max_samples: int = 64  # per evaluated set (trained rows, holdout, each earlier set)
    max_exact_match: int = 64  # greedy decoding is the slow part: its own cap
    max_anchor_prompts: int = 32
    batch_size: int = 16
    max_length: int = 256
    max_new_tokens: int = 32
    seed: int = 0


def bounded_sample(rows: Sequence[Row], cap: int, seed: int = 0) -> list[Row]:
    """At most `cap` rows, chosen by a stable hash of each row (same rows in every run and version)."""
    if len(rows) <= cap:
        return list(rows)

    def key(row: Row) -> str:
        ident = row.get("id") or json.dumps([row.get("prompt"), row.get("messages"), row.get("response")], sort_keys=True)
        return hashlib.sha256(f"{seed}:{ident}".encode()).hexdigest()

    return sorted(rows, key=key)[:cap]


@torch.no_grad()
def teacher_forced_scores(model: Any, tokenizer: Any, rows: Sequence[Row], settings: EvalSettings = EvalSettings()) -> dict[str, float]:
    """Answer token accuracy and mean NLL over response tokens (teacher forcing), micro-averaged."""
    if not rows:
        return {"token_accuracy": float("nan"), "nll": float("nan"), "samples": 0, "tokens": 0}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = tokens = 0
    nll_sum = 0.0
    try:
        for batch in batches_for_rows(list(rows), tokenizer, settings.batch_size, settings.max_length):
            ids = batch["input_ids"].to(device)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
            targets = batch["labels"][:, 1:].to(device)
            mask = targets != -100
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            correct += int(((logits.argmax(-1) == targets) & mask).sum())
            tokens += int(mask.sum())
            nll_sum += float((nll * mask).sum())
    finally:
        model.train(was_training)
    return {"token_accuracy": correct / max(tokens, 1), "nll": nll_sum / max(tokens, 1), "samples": len(rows), "tokens": tokens}


def greedy_exact_match(model: Any, tokenizer: Any, rows: Sequence[Row], settings: EvalSettings = EvalSettings()) -> float:
    """Share of rows whose greedy answer (`generation.generate_answers`) equals the taught response."""
    if not rows:
        return float("nan")
    from workers.learning.generation import exact_match, generate_answers

    answers = generate_answers(model, tokenizer, list(rows), max_new_tokens=settings.max_new_tokens,
                               batch_size=settings.batch_size)
    return exact_match(answers, list(rows))


@torch.no_grad()
def kl_drift(model: Any, tokenizer: Any, anchor_rows: Sequence[Row], settings: EvalSettings = EvalSettings()) -> float:
    """Mean KL(p_base ‖ p_adapted) per real token of the anchor prompts (and responses, if any)."""
    if not anchor_rows:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    rows = [dict(r, response=r.get("response") or "") for r in anchor_rows]
    try:
        for batch in batches_for_rows(rows, tokenizer, settings.batch_size, settings.max_length):
            inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
            adapted = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
            with model.disable_adapter():
                base = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
            per_token = (base.exp() * (base - adapted)).sum(-1)
            mask = inputs["attention_mask"].bool()
            total += float(per_token[mask].sum())
            count += int(mask.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def forgetting_ratio(before: float, after: float) -> float:
    """``(before − after) / before``; 0 when nothing was known before (nothing to forget)."""
    if not before or math.isnan(before) or before <= 0:
        return 0.0
    return (before - after) / before


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """BWT of an accuracy matrix ``R[version][task]`` (task i taught by version i):
    mean over earlier tasks of ``R[last][i] − R[i][i]``; negative means forgetting."""
    last = len(matrix) - 1
    if last < 1:
        return 0.0
    return sum(matrix[last][i] - matrix[i][i] for i in range(last)) / last


def accuracy_matrix(results: Mapping[str, Mapping[str, float]], versions: Sequence[str], datasets: Sequence[str]) -> dict[str, Any]:
    """Rows = versions, columns = datasets; missing cells are None. JSON-ready."""
    return {
        "versions": list(versions),
        "datasets": list(datasets),
        "matrix": [[results.get(v, {}).get(d) for d in datasets] for v in versions],
    }


def evaluate_cycle(
    model: Any,
    tokenizer: Any,
    trained_rows: Sequence[Row],
    holdout_rows: Sequence[Row] = (),
    earlier: Mapping[str, Sequence[Row]] | None = None,
    before: Mapping[str, float] | None = None,
    anchor_rows: Sequence[Row] = (),
    settings: EvalSettings = EvalSettings(),
    with_exact_match: bool = True,
) -> dict[str, Any]:
    """The evaluation dict of one cycle (see the module docstring); deterministic for fixed inputs.

    `earlier` maps an earlier dataset's name to its rows; `before` maps it to its token accuracy when
    it was taught (the version that trained it), from that version's evaluation.
    """
    cap = settings.max_samples
    trained = bounded_sample(trained_rows, cap, settings.seed)
    plasticity = teacher_forced_scores(model, tokenizer, trained, settings)
    if with_exact_match:
        plasticity["exact_match"] = greedy_exact_match(model, tokenizer, bounded_sample(trained, settings.max_exact_match, settings.seed), settings)
    report: dict[str, Any] = {"plasticity": plasticity}
    if holdout_rows:
        report["holdout"] = teacher_forced_scores(model, tokenizer, bounded_sample(holdout_rows, cap, settings.seed), settings)
    retention: dict[str, Any] = {}
    for name, rows in (earlier or {}).items():
        scores = teacher_forced_scores(model, tokenizer, bounded_sample(rows, cap, settings.seed), settings)
        entry = {"token_accuracy": scores["token_accuracy"], "nll": scores["nll"], "samples": scores["samples"]}
        if before and name in before:
            entry["before"] = before[name]
            entry["forgetting"] = forgetting_ratio(before[name], scores["token_accuracy"])
        retention[name] = entry
    report["retention"] = retention
    forgettings = [e["forgetting"] for e in retention.values() if "forgetting" in e]
    report["forgetting_mean"] = sum(forgettings) / len(forgettings) if forgettings else 0.0
    report["forgetting_max"] = max(forgettings) if forgettings else 0.0
    if before:
        deltas = [retention[n]["token_accuracy"] - before[n] for n in retention if n in before]
        report["backward_transfer"] = sum(deltas) / len(deltas) if deltas else 0.0
    if anchor_rows:
        report["kl_drift"] = kl_drift(model, tokenizer, bounded_sample(anchor_rows, settings.max_anchor_prompts, settings.seed), settings)
    report["settings"] = asdict(settings)
    return _json_ready(report)


def _json_ready(value: Any) -> Any:
    """NaN/inf become None so the dict is strict JSON (the database column and the CLI both need it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value
