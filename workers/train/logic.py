"""The `train` job: one continual cycle — continue the parent adapter on a new dataset, publish it.

Effectively-once: the adapter is published under a job-scoped prefix and its row carries the job id
(unique), so a retried job finds its own row and does nothing; a job killed mid-training resumes from
its last checkpoint under `checkpoints/<job id>/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from common.db.engine import session_scope
from common.db.models import Adapter
from common.errors import RetryableError
from workers.context import JobContext
from workers.lineage import (
    current_parent,
    datasets_by_id,
    get_adapter,
    get_dataset,
    latest_fisher_for,
    taught_dataset_ids,
)
from workers.model_setup import download_adapter_row, load_base, scratch_dir
from workers.params import parse_params
from workers.train.config import TrainJobParams, train_config


def _result(adapter: Adapter) -> dict[str, Any]:
    return {"status": "trained", "adapter_id": adapter.id, "version": adapter.version, "uri": adapter.uri}


def _plan_inputs(ctx: JobContext, params: TrainJobParams) -> dict[str, Any] | Adapter:
    """Read everything the cycle needs from the database (or the adapter this job already made)."""
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(Adapter).where(Adapter.job_id == ctx.job_id)).first()
        if done is not None:
            return done
        dataset = get_dataset(session, params.dataset_id)
        if params.parent_adapter_id is not None:
            parent = get_adapter(session, params.parent_adapter_id)
        else:
            parent = None if params.fresh else current_parent(session, params.adapter_name or ctx.settings.adapter_name)
        history = [d for d in datasets_by_id(session, taught_dataset_ids(session, parent)) if d.id != dataset.id]
        fisher = None
        if params.fisher_id is not None:
            from common.db.models import FisherArtifact

            fisher = session.get(FisherArtifact, params.fisher_id)
        elif parent is not None:
            fisher = latest_fisher_for(session, parent)
        return {
            "dataset": (dataset.id, dataset.manifest_key),
            "parent": parent,
            "history": [(d.id, d.manifest_key) for d in history],
            "fisher": (fisher.id, fisher.uri) if fisher is not None else None,
        }


def run(ctx: JobContext) -> dict[str, Any]:
    params: TrainJobParams = parse_params(ctx.params, TrainJobParams)
    inputs = _plan_inputs(ctx, params)
    if isinstance(inputs, Adapter):
        return _result(inputs)

    from workers.export.shard import iter_dataset_rows
    from workers.learning.continual import prepare_cycle, recipe
    from workers.learning.fisher_artifact import FisherArtifact as FisherValues
    from workers.learning.kl import load_parent_as_teacher, unload_teacher
    from workers.learning.lora import LoraSettings, attach_adapter, publish_adapter, settings_dict
    from workers.learning.replay import store_history
    from workers.learning.training import TrainCallbacks, fit

    continual = recipe(params.recipe or ctx.settings.recipe, **params.recipe_overrides)
    config = train_config(ctx.settings, params.train)
    dataset_id, manifest_key = inputs["dataset"]
    parent: Adapter | None = inputs["parent"]
    new_rows = list(iter_dataset_rows(ctx.store, manifest_key, split="train"))
    # Re-streamed every epoch, never loaded whole: memory stays bounded as history grows.
    history = store_history(ctx.store, [key for _, key in inputs["history"]]) if inputs["history"] else None

    fisher_values = None
    if inputs["fisher"] is not None and continual.needs_fisher:
        fisher_values = FisherValues.from_bytes(ctx.store.get_bytes(inputs["fisher"][1])).values

    loaded = load_base(ctx)
    with scratch_dir(ctx) as tmp:
        parent_dir = download_adapter_row(ctx, parent, Path(tmp)) if parent is not None else None
        lora = LoraSettings(**params.lora)
        import torch

        torch.manual_seed(config.seed)  # a fresh adapter's initial values come from the global RNG
        model = attach_adapter(loaded.model, lora, parent_dir)
        teacher = None
        if continual.kl_strength > 0 and continual.kl_teacher == "parent" and parent_dir is not None:
            teacher = load_parent_as_teacher(model, str(parent_dir))
        plan = prepare_cycle(
            model,
            new_rows,
            continual,
            history=history,
            fisher=fisher_values,
            parent_teacher=teacher,
        )

        def progress(step: int, total: int, loss: float, tokens_per_s: float) -> None:
            ctx.report_progress({"step": step, "total": total, "loss": loss, "tokens_per_s": tokens_per_s})

        result = fit(
            model,
            loaded.tokenizer,
            plan.rows,
            config,
            plan.regularizers,
            TrainCallbacks(progress=progress, stop=ctx.should_stop),
            checkpoint_store=ctx.store,
            checkpoint_prefix=f"checkpoints/{ctx.job_id}",
        )
        if teacher is not None:
            unload_teacher(model, teacher)  # publish only the trained adapter
        prefix = ctx.attempt_prefix(f"adapters/{params.adapter_name or ctx.settings.adapter_name}/{ctx.job_id}")
        metadata = {
            "prefix": prefix,
            "base_model": loaded.base_model,
            "parent_version": parent.version if parent is not None else None,
            "parent_id": parent.id if parent is not None else None,
            "dataset_ids": [dataset_id],
            "history_dataset_ids": [i for i, _ in inputs["history"]],
            "fisher_id": inputs["fisher"][0] if inputs["fisher"] else None,
            "recipe": {"name": params.recipe or ctx.settings.recipe, **continual.to_dict()},
            "notes": plan.notes,
            "lora": settings_dict(lora),
            "train_config": config.to_dict(),
            "train": result.to_dict(),
            "device": loaded.device.describe(),
            "job_id": ctx.job_id,
        }
        publish_adapter(ctx.store, prefix, model, metadata, workdir=tmp)
    adapter = _register(ctx, params.adapter_name or ctx.settings.adapter_name, parent, dataset_id, inputs, prefix, metadata)
    ctx.store.delete_prefix(f"checkpoints/{ctx.job_id}/")  # the adapter is durable; checkpoints are not needed
    return _result(adapter)


def _register(ctx: JobContext, name: str, parent: Adapter | None, dataset_id: int, inputs: dict, prefix: str,
              metadata: dict) -> Adapter:
    """Insert the adapter row with the next version number; the job id makes a retry find it instead."""
    for _attempt in range(5):
        try:
            with session_scope(ctx.sessions) as session:
                done = session.scalars(select(Adapter).where(Adapter.job_id == ctx.job_id)).first()
                if done is not None:
                    ctx.finish(session, _result(done))  # fenced: refused unless we hold the lease
                    return done
                version = (session.scalar(select(func.max(Adapter.version)).where(Adapter.name == name)) or 0) + 1
                lineage = (list(parent.lineage) if parent is not None else []) + [version]
                adapter = Adapter(
                    name=name,
                    version=version,
                    parent_id=parent.id if parent is not None else None,
                    lineage=lineage,
                    base_model=metadata["base_model"],
                    uri=f"{ctx.store.url.rstrip('/')}/{prefix}",
                    status="candidate",
                    dataset_ids=[dataset_id],
                    fisher_id=inputs["fisher"][0] if inputs["fisher"] else None,
                    metadata_=metadata,
                    job_id=ctx.job_id,
                )
                session.add(adapter)
                session.flush()
                ctx.finish(session, _result(adapter))  # same transaction: registered iff we held the lease
                return adapter
        except IntegrityError:
            continue  # another job took this version number (or this job's row appeared): look again
    raise RetryableError("could not register the adapter version after 5 tries (heavy contention): retry the job")
