"""The `evaluate` job: score a candidate adapter against its parent on new and earlier data.

Both versions are scored in the same process on the same bounded, deterministic samples, so
"before" (the parent, i.e. what serves users now) and "after" (the candidate) differ only by the
cycle's training: forgetting = (before − after) / before on each earlier dataset.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Evaluation
from workers.context import JobContext
from workers.lineage import datasets_by_id, get_adapter, get_dataset, taught_dataset_ids
from workers.model_setup import download_adapter_row, load_base, scratch_dir
from workers.params import parse_params


class EvaluateJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: int = Field(description="The candidate adapter.")
    dataset_id: int | None = Field(None, description="The new dataset; default: the one the adapter trained on.")
    exact_match: bool = Field(True, description="Also greedy-decode answers for exact match (slower).")


def _bounded_rows(store: Any, manifest_key: str, split: str, cap: int) -> list[dict]:
    from workers.export.shard import iter_dataset_rows
    from workers.learning.replay import reservoir_sample

    return reservoir_sample(iter_dataset_rows(store, manifest_key, split=split), cap, random.Random(0))


def run(ctx: JobContext) -> dict[str, Any]:
    params: EvaluateJobParams = parse_params(ctx.params, EvaluateJobParams)
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(Evaluation).where(Evaluation.job_id == ctx.job_id)).first()
        if done is not None:
            return {"status": "evaluated", "evaluation_id": done.id, "metrics": done.metrics}
        candidate = get_adapter(session, params.adapter_id)
        dataset = get_dataset(session, params.dataset_id or candidate.dataset_ids[-1])
        parent = get_adapter(session, candidate.parent_id) if candidate.parent_id else None
        earlier = [d for d in datasets_by_id(session, taught_dataset_ids(session, parent)) if d.id != dataset.id]
        new_key, earlier_keys = dataset.manifest_key, [(d.id, d.manifest_key) for d in earlier]
        train_meta = (candidate.metadata_ or {}).get("train", {})

    from peft import PeftModel

    from workers.evaluate.anchors import anchor_rows
    from workers.learning.evaluation import EvalSettings, evaluate_cycle, teacher_forced_scores

    cap = ctx.settings.eval_max_samples
    settings = EvalSettings(max_samples=cap, max_exact_match=min(cap, 64))
    trained = _bounded_rows(ctx.store, new_key, "train", cap)
    holdout = _bounded_rows(ctx.store, new_key, "holdout", cap)
    earlier_rows = {str(i): _bounded_rows(ctx.store, key, "train", cap) for i, key in earlier_keys}

    loaded = load_base(ctx)
    with scratch_dir(ctx) as tmp:
        model = PeftModel.from_pretrained(
            loaded.model, str(download_adapter_row(ctx, candidate, Path(tmp))), adapter_name="candidate"
        )
        before: dict[str, float] = {}
        new_before = None
        if parent is not None:
            model.load_adapter(str(download_adapter_row(ctx, parent, Path(tmp))), adapter_name="parent")
            model.set_adapter("parent")
            before = {name: teacher_forced_scores(model, loaded.tokenizer, rows, settings)["token_accuracy"]
                      for name, rows in earlier_rows.items()}
            new_before = teacher_forced_scores(model, loaded.tokenizer, trained, settings)["token_accuracy"]
            model.set_adapter("candidate")
        ctx.report_progress({"stage": "scoring candidate"})
        report = evaluate_cycle(
            model,
            loaded.tokenizer,
            trained,
            holdout,
            earlier_rows,
            before,
            anchor_rows(),
            settings,
            with_exact_match=params.exact_match,
        )
    plasticity = report["plasticity"]["token_accuracy"]
    accuracy_by_dataset = {str(dataset.id): plasticity}
    accuracy_by_dataset.update({name: entry["token_accuracy"] for name, entry in report["retention"].items()})
    metrics = {
        **report,
        # Flat summary fields: what the promotion gate, the CLI tables and the report read.
        "dataset_id": dataset.id,
        "parent_id": parent.id if parent is not None else None,
        "plasticity": plasticity,
        "plasticity_detail": report["plasticity"],
        "exact_match": report["plasticity"].get("exact_match"),
        "gain": None if new_before is None else plasticity - new_before,
        "forgetting": report["forgetting_max"],
        "accuracy_by_dataset": accuracy_by_dataset,
        "train_loss_curve": train_meta.get("loss_curve", []),
    }
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(Evaluation).where(Evaluation.job_id == ctx.job_id)).first()
        if done is None:
            done = Evaluation(adapter_id=candidate.id, dataset_id=dataset.id, metrics=metrics, job_id=ctx.job_id)
            session.add(done)
            session.flush()
        result = {"status": "evaluated", "evaluation_id": done.id, "metrics": _summary(metrics)}
        ctx.finish(session, result)  # same transaction: recorded iff this attempt holds the lease
        return result


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("plasticity", "exact_match", "gain", "forgetting", "kl_drift", "backward_transfer")
    return {k: metrics.get(k) for k in keys}
