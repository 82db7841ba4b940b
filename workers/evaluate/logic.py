"""The `evaluate` job: score a candidate adapter in the vocabulary of `workers.learning.evaluation`.

- recall on the new data's taught rows (train + probe, positive only); generalisation on its holdout
  rows against the parent (the base model, adapter off, on a first cycle); suppression of the
  thumbs-down rows it taught, against the same parent;
- retention of each earlier dataset of the lineage on its **probe** rows (never replayed), against
  the score stored when it was first taught (`dataset_scores`), not against the parent: a lineage
  that loses a little every cycle shows its whole loss;
- general retention against the base model (`workers.learning.general_retention`).

It then stores the candidate's own scores (its first-taught score on the datasets it taught, its
current score on every earlier one) and builds the accuracy matrix and backward transfer of the
lineage from the stored scores. A retried job finds its evaluation row and returns it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db.engine import session_scope
from common.db.models import Adapter, DatasetScore, Evaluation
from common.errors import ObjectNotFound
from workers.context import JobContext
from workers.evaluate.summary import summary
from workers.lineage import datasets_by_id, get_adapter, get_dataset, taught_dataset_ids
from workers.model_setup import download_adapter_row, load_base, scratch_dir
from workers.params import parse_params


class EvaluateJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: int = Field(description="The candidate adapter.")
    dataset_id: int | None = Field(None, description="The new dataset; default: the one the adapter trained on.")
    exact_match: bool | None = Field(
        None, description="Also greedy-decode taught answers for exact match; default settings.eval_exact_match."
    )
    general_retention: bool = Field(True, description="Score general retention against the base model.")


def _bounded_rows(store: Any, manifest_key: str, split: str | tuple[str, ...], cap: int) -> list[dict]:
    from workers.export.shard import iter_dataset_rows
    from workers.learning.replay import reservoir_sample

    return reservoir_sample(iter_dataset_rows(store, manifest_key, split=split), cap, random.Random(0))


def lineage_of(session: Session, adapter: Adapter | None) -> list[Adapter]:
    """The adapter and its ancestors, root first."""
    chain: list[Adapter] = []
    while adapter is not None:
        chain.insert(0, adapter)
        adapter = session.get(Adapter, adapter.parent_id) if adapter.parent_id else None
    return chain


def stored_scores(session: Session, adapter_ids: list[int]) -> dict[int, dict[int, float | None]]:
    """adapter id → dataset id → stored probe token accuracy."""
    scores: dict[int, dict[int, float | None]] = {}
    if adapter_ids:
        for row in session.scalars(select(DatasetScore).where(DatasetScore.adapter_id.in_(adapter_ids))):
            scores.setdefault(row.adapter_id, {})[row.dataset_id] = row.token_accuracy
    return scores


def first_taught(lineage: list[Adapter], scores: dict[int, dict[int, float | None]], dataset_id: int) -> float | None:
    """The score of `dataset_id` under the earliest version of `lineage` that has one stored: the
    version that first taught it (no earlier version was scored on a dataset it never saw)."""
    for adapter in lineage:
        value = scores.get(adapter.id, {}).get(dataset_id)
        if value is not None:
            return value
    return None


def matrix_and_transfer(
    lineage: list[Adapter], dataset_ids: list[int], scores: dict[int, dict[int, float | None]], new_ids: list[int]
) -> tuple[dict[str, Any], float | None]:
    """The accuracy matrix (versions × datasets, probe rows) and backward transfer: the mean over
    earlier datasets of (now − first taught); negative means forgetting."""
    from workers.learning.evaluation import accuracy_matrix

    versions = [f"v{a.version}" for a in lineage]
    by_version = {f"v{a.version}": {str(d): scores.get(a.id, {}).get(d) for d in dataset_ids} for a in lineage}
    matrix = accuracy_matrix(by_version, versions, [str(d) for d in dataset_ids])
    candidate = lineage[-1]
    deltas = []
    for d in dataset_ids:
        if d in new_ids:
            continue
        now, first = scores.get(candidate.id, {}).get(d), first_taught(lineage[:-1], scores, d)
        if now is not None and first is not None:
            deltas.append(now - first)
    return matrix, (sum(deltas) / len(deltas) if deltas else None)


def run(ctx: JobContext) -> dict[str, Any]:
    params: EvaluateJobParams = parse_params(ctx.params, EvaluateJobParams)
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(Evaluation).where(Evaluation.job_id == ctx.job_id)).first()
        if done is not None:
            return {"status": "evaluated", "evaluation_id": done.id, "metrics": summary(done.metrics)}
        candidate = get_adapter(session, params.adapter_id)
        dataset = get_dataset(session, params.dataset_id or candidate.dataset_ids[-1])
        parent = get_adapter(session, candidate.parent_id) if candidate.parent_id else None
        earlier_ids = [d for d in taught_dataset_ids(session, parent) if d != dataset.id]
        # Datasets this version taught for the first time in its lineage (the new one, and any a
        # rollback made it teach again): their probe score now is their "first taught" score.
        new_ids = [d for d in candidate.dataset_ids if d not in earlier_ids]
        if dataset.id not in new_ids:
            new_ids.append(dataset.id)
        keys = {d.id: d.manifest_key for d in datasets_by_id(session, earlier_ids + new_ids)}
        lineage = lineage_of(session, candidate)
        scores = stored_scores(session, [a.id for a in lineage[:-1]])
        first = {str(d): first_taught(lineage[:-1], scores, d) for d in earlier_ids}
        train_meta = (candidate.metadata_ or {}).get("train", {})

    from peft import PeftModel

    from workers.evaluate.anchors import retention_sets
    from workers.learning.evaluation import EvalSettings, evaluate_cycle, is_positive, teacher_forced_scores
    from workers.learning.general_retention import base_model, compute_base_answers

    cap = ctx.settings.eval_max_samples
    settings = EvalSettings(max_samples=cap, max_exact_match=min(cap, 64))
    taught = _bounded_rows(ctx.store, keys[dataset.id], ("train", "probe"), cap)
    probe = _bounded_rows(ctx.store, keys[dataset.id], "probe", cap)
    holdout = _bounded_rows(ctx.store, keys[dataset.id], "holdout", cap)
    # Retention reads only probe rows: replay draws `train`, so scoring it would hide forgetting.
    earlier_probe = {str(i): _bounded_rows(ctx.store, keys[i], "probe", cap) for i in earlier_ids if i in keys}
    other_new = {i: _bounded_rows(ctx.store, keys[i], "probe", cap) for i in new_ids if i != dataset.id and i in keys}
    exact = ctx.settings.eval_exact_match if params.exact_match is None else params.exact_match
    general = retention_sets(getattr(ctx.settings, "anchors_file", None)) if params.general_retention else None

    loaded = load_base(ctx)
    with scratch_dir(ctx) as tmp:
        model = PeftModel.from_pretrained(
            loaded.model, str(download_adapter_row(ctx, candidate, Path(tmp))), adapter_name="candidate"
        )
        if parent is not None:
            model.load_adapter(str(download_adapter_row(ctx, parent, Path(tmp))), adapter_name="parent")
            model.set_adapter("candidate")

        def as_parent() -> Any:
            return _switched(model, "parent") if parent is not None else base_model(model)

        base_answers = None
        if general is not None:
            ctx.report_progress({"stage": "base answers to general questions"})
            base_answers = cached_base_answers(
                ctx.store, loaded.base_model, general, settings.max_new_tokens,
                lambda: compute_base_answers(model, loaded.tokenizer, general[0], general[1], settings),
            )
        ctx.report_progress({"stage": "scoring candidate"})
        report = evaluate_cycle(
            model, loaded.tokenizer, taught, holdout, probe, earlier_probe, first, as_parent, settings,
            exact_match=exact, general=general, base_answers=base_answers,
        )
        # The other datasets this version taught first (after a rollback): their first-taught scores.
        own_scores = {
            i: teacher_forced_scores(model, loaded.tokenizer, [r for r in rows if is_positive(r)], settings)
            for i, rows in other_new.items()
        }

    new_scores: dict[int, tuple[float | None, int]] = {
        dataset.id: (report["recall_probe"]["token_accuracy"], report["recall_probe"]["samples"])
    }
    new_scores.update({i: (s["token_accuracy"] if s["samples"] else None, s["samples"]) for i, s in own_scores.items()})
    new_scores.update({int(name): (e["now"], e["samples"]) for name, e in report["retention"].items()})
    scores[candidate.id] = {d: value for d, (value, _) in new_scores.items()}
    matrix, bwt = matrix_and_transfer(lineage, earlier_ids + [d for d in new_ids if d not in earlier_ids], scores, new_ids)
    metrics = {
        **report,
        "dataset_id": dataset.id,
        "parent_id": parent.id if parent is not None else None,
        "accuracy_matrix": matrix,
        "backward_transfer": bwt,
        "train_loss_curve": train_meta.get("loss_curve", []),
    }
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(Evaluation).where(Evaluation.job_id == ctx.job_id)).first()
        if done is None:
            done = Evaluation(adapter_id=candidate.id, dataset_id=dataset.id, metrics=metrics, job_id=ctx.job_id)
            session.add(done)
            session.flush()
            for dataset_id, (value, samples) in new_scores.items():
                # merge: a re-evaluation of the same adapter (another job) replaces its own scores.
                session.merge(DatasetScore(adapter_id=candidate.id, dataset_id=dataset_id, token_accuracy=value,
                                           samples=samples, evaluation_id=done.id))
        result = {"status": "evaluated", "evaluation_id": done.id, "metrics": summary(metrics)}
        ctx.finish(session, result)  # same transaction: recorded iff this attempt holds the lease
        return result


def cached_base_answers(store: Any, base_model_id: str, general: tuple[list, list], max_new_tokens: int,
                        compute: Any) -> dict[str, list[str]]:
    """The base model's greedy answers to the general-retention set, computed once per (base model,
    question/prompt set, token budget) and kept in the object store: they never change, and greedy
    decoding them is most of an evaluation's cost on a small model."""
    key_text = json.dumps([base_model_id, general[0], general[1], max_new_tokens], sort_keys=True)
    key = f"cache/general-base-answers/{hashlib.sha256(key_text.encode()).hexdigest()}.json"
    try:
        return json.loads(store.get_bytes(key))
    except ObjectNotFound:
        answers = compute()
        store.put_bytes(key, json.dumps(answers).encode())  # one small object: a retry rewrites the same
        return answers


class _switched:
    """Context: `model` runs adapter `name`, then the candidate again."""

    def __init__(self, model: Any, name: str):
        self._model, self._name = model, name

    def __enter__(self) -> None:
        self._model.set_adapter(self._name)

    def __exit__(self, *exc: object) -> None:
        self._model.set_adapter("candidate")
