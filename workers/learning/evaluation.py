"""What a cycle taught and what it kept, as a JSON-ready dict the evaluation row stores.

One vocabulary (the evaluate job, the gate, the CLI, the report and the README use these names):

- *recall*: teacher-forced answer token accuracy (and NLL) on the positive rows this cycle taught
  (its `train` + `probe` rows; thumbs-down rows are never recall). Exact match of greedy answers
  against the whole reference is opt-in (short-answer data only).
- *generalisation*: NLL and token accuracy on the cycle's `holdout` rows (never trained), for the
  candidate and its parent (the base model, adapter off, on a first cycle); ``nll_gain`` = parent −
  candidate NLL, positive when the cycle generalised.
- *retention*: each earlier dataset scored on its `probe` rows (taught once, never replayed) against
  the score it had when first taught (``first``, stored by the job): forgetting = (first − now)/first.
  Scored against the parent instead, losing a little per cycle would pass forever.
- *suppression*: on the thumbs-down rows this cycle taught, how far the mean per-token log-prob of the
  disliked response fell against the parent (positive = pushed down).
- *general retention*: `workers.learning.general_retention` (the base's right answers still right,
  agreement with the base, KL drift from it).

Every set is cut to a bounded, deterministic sample (chosen by a hash of the row, so the same rows are
scored in every version and cost does not grow with history).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workers.learning.fisher import batches_for_rows
from workers.learning.losses import mean_response_logprob_per_row

Row = dict[str, Any]


@dataclass(frozen=True)
class EvalSettings:
    """Sample caps and batching; the caps bound cost however long history grows."""

    max_samples: int = 64  # per evaluated set (trained rows, holdout, each earlier set)
    max_exact_match: int = 64  # greedy decoding is the slow part: its own cap
    max_anchor_prompts: int = 32
    batch_size: int = 16
    max_length: int = 256
    max_new_tokens: int = 32  # general-retention answers; exact match sizes its budget from the references
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
    """Share of rows whose greedy answer (`generation.generate_answers`) equals the WHOLE taught response.

    The token budget comes from the longest reference (never `settings.max_new_tokens`): a cut answer
    would score 0 however right it was."""
    if not rows:
        return float("nan")
    from workers.learning.generation import exact_match, generate_answers

    answers = generate_answers(model, tokenizer, list(rows), max_new_tokens=None, batch_size=settings.batch_size)
    return exact_match(answers, list(rows))


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


def is_positive(row: Row) -> bool:
    """A row whose response is a target to learn: not thumbs-down (under any policy), not unlikelihood."""
    return not row.get("unlikelihood") and row.get("feedback") != "thumbs_down"


def base_scope(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The base model: the adapter switched off (a model without an adapter is its own base)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else contextlib.nullcontext()


@torch.no_grad()
def mean_response_logprob(model: Any, tokenizer: Any, rows: Sequence[Row], settings: EvalSettings = EvalSettings()) -> float:
    """Mean over rows of each row's mean per-token log-prob of its response (teacher forcing)."""
    if not rows:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for batch in batches_for_rows(list(rows), tokenizer, settings.batch_size, settings.max_length):
            ids = batch["input_ids"].to(device)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
            total += float(mean_response_logprob_per_row(logits, batch["labels"].to(device)).sum())
    finally:
        model.train(was_training)
    return total / len(rows)


def recall_scores(model: Any, tokenizer: Any, rows: Sequence[Row], settings: EvalSettings, exact_match: bool) -> dict[str, Any]:
    """recall {token_accuracy, nll, exact_match (None unless asked), samples} on positive rows."""
    scores = teacher_forced_scores(model, tokenizer, rows, settings)
    result = {k: scores[k] for k in ("token_accuracy", "nll", "samples")}
    # Document chunks (`{"text"}` rows) are not answers to a prompt: nothing to decode and compare; nor are
    # a document's views (questions answered with whole sentences of it, `workers/documents/views.py`).
    answers = [r for r in rows if not r.get("text") and not r.get("view")]
    result["exact_match"] = (
        greedy_exact_match(model, tokenizer, bounded_sample(answers, settings.max_exact_match, settings.seed), settings)
        if exact_match and answers else None
    )
    return result


def evaluate_cycle(
    model: Any,
    tokenizer: Any,
    taught_rows: Sequence[Row],
    holdout_rows: Sequence[Row] = (),
    probe_rows: Sequence[Row] = (),
    earlier_probe: Mapping[str, Sequence[Row]] | None = None,
    first: Mapping[str, float | None] | None = None,
    parent: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    settings: EvalSettings = EvalSettings(),
    exact_match: bool = False,
    general: tuple[Sequence[Mapping[str, Any]], Sequence[str]] | None = None,
    base_answers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The evaluation dict of one cycle (see the module docstring); deterministic for fixed inputs.

    `taught_rows`: the new data's train + probe rows (any feedback); `probe_rows`: its probe rows (the
    score stored as "first taught"); `earlier_probe`: each earlier dataset's probe rows by name, with
    `first` its stored first-taught score; `parent()`: a context in which `model` is the parent
    (default: the base, adapter off); `general`: (questions, prompts) for general retention, with the
    base's answers to them when already known (`general_retention.compute_base_answers`).
    """
    cap = settings.max_samples
    parent = parent or (lambda: base_scope(model))
    positive = bounded_sample([r for r in taught_rows if is_positive(r)], cap, settings.seed)
    disliked = bounded_sample([r for r in taught_rows if not is_positive(r)], cap, settings.seed)
    holdout = bounded_sample([r for r in holdout_rows if is_positive(r)], cap, settings.seed)
    probe = bounded_sample([r for r in probe_rows if is_positive(r)], cap, settings.seed)

    report: dict[str, Any] = {"recall": recall_scores(model, tokenizer, positive, settings, exact_match)}
    own = teacher_forced_scores(model, tokenizer, probe, settings)
    report["recall_probe"] = {"token_accuracy": own["token_accuracy"], "nll": own["nll"], "samples": own["samples"]}

    candidate_holdout = teacher_forced_scores(model, tokenizer, holdout, settings)
    candidate_disliked = mean_response_logprob(model, tokenizer, disliked, settings)
    retention: dict[str, Any] = {}
    for name, rows in (earlier_probe or {}).items():
        kept = bounded_sample([r for r in rows if is_positive(r)], cap, settings.seed)
        now = teacher_forced_scores(model, tokenizer, kept, settings)["token_accuracy"] if kept else None
        before = (first or {}).get(name)
        retention[name] = {
            "first": before,
            "now": now,
            "forgetting": None if before is None or now is None else forgetting_ratio(before, now),
            "samples": len(kept),
        }
    with parent():
        parent_holdout = teacher_forced_scores(model, tokenizer, holdout, settings)
        parent_disliked = mean_response_logprob(model, tokenizer, disliked, settings)
    report["generalisation"] = {
        "nll": candidate_holdout["nll"],
        "token_accuracy": candidate_holdout["token_accuracy"],
        "parent_nll": parent_holdout["nll"],
        "parent_token_accuracy": parent_holdout["token_accuracy"],
        "nll_gain": parent_holdout["nll"] - candidate_holdout["nll"],  # NaN (→ None) without holdout rows
        "samples": len(holdout),
    }
    report["retention"] = retention
    forgettings = [e["forgetting"] for e in retention.values() if e["forgetting"] is not None]
    report["forgetting_mean"] = sum(forgettings) / len(forgettings) if forgettings else None
    report["forgetting_max"] = max(forgettings) if forgettings else None
    report["suppression"] = (
        {"logprob_drop": parent_disliked - candidate_disliked, "rows": len(disliked)} if disliked else None
    )
    report["general_retention"] = None
    if general is not None:
        from workers.learning.general_retention import score_general_retention

        questions, prompts = general
        report["general_retention"] = score_general_retention(model, tokenizer, questions, prompts,
                                                              base_answers=base_answers, settings=settings)
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
