"""The `fisher` job: the diagonal empirical Fisher of the current adapter for the next cycle's EWC.

Computed at the parent adapter on a bounded sample of what it was last taught, folded online into the
Fisher its own parent carried (`F ← γ F_old + F_new`, the chain's normalisation scale kept), stored as
safetensors under a job-scoped key. It is computed for the `train` step that will read it: the same
recipe, recipe overrides and adapter lineage (the pipeline passes `steps.train`'s values here), and the
artifact records the adapter id, parameter space, base model and recipe, so `train` can refuse a
Fisher that belongs to something else. A recipe without Fisher-weighted EWC, a lineage with no adapter
yet, or a `train` step that starts a fresh adapter ends `skipped` with the reason.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import FisherArtifact
from workers.context import JobContext
from workers.lineage import current_parent, datasets_by_id, get_adapter, latest_fisher_for
from workers.model_setup import download_adapter_row, load_base, scratch_dir
from workers.params import parse_params


class FisherJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: int | None = Field(None, description="Adapter to measure; default: production, else newest.")
    adapter_name: str | None = Field(None, description="Lineage whose parent is measured; default: settings.")
    recipe: str | None = Field(None, description="Recipe whose EWC settings decide the Fisher's space.")
    recipe_overrides: dict[str, Any] = Field(default_factory=dict, description="As the train step's.")
    fresh: bool = Field(False, description="The train step starts a fresh adapter: nothing to measure.")
    max_samples: int | None = Field(None, ge=1, description="Default: settings.fisher_max_samples.")
    force: bool = Field(False, description="Compute even when the recipe does not use a Fisher.")


def run(ctx: JobContext) -> dict[str, Any]:
    params: FisherJobParams = parse_params(ctx.params, FisherJobParams)
    from workers.learning.continual import recipe

    recipe_name = params.recipe or ctx.settings.recipe
    continual = recipe(recipe_name, **params.recipe_overrides)
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(FisherArtifact).where(FisherArtifact.job_id == ctx.job_id)).first()
        if done is not None:
            return {"status": "computed", "fisher_id": done.id}
        if params.fresh:
            return {"status": "skipped", "reason": "the train step starts a fresh adapter: no parent to protect"}
        adapter = (
            get_adapter(session, params.adapter_id)
            if params.adapter_id is not None
            else current_parent(session, params.adapter_name or ctx.settings.adapter_name)
        )
        if adapter is None:
            return {"status": "skipped", "reason": "no adapter yet: the first cycle has nothing to protect"}
        if not (continual.needs_fisher or params.force):
            return {"status": "skipped", "reason": f"recipe {recipe_name!r} uses no Fisher"}
        keys = [d.manifest_key for d in datasets_by_id(session, list(adapter.dataset_ids))]
        grandparent = session.get(type(adapter), adapter.parent_id) if adapter.parent_id else None
        previous_row = latest_fisher_for(session, grandparent)
        previous_ref = (previous_row.id, previous_row.uri) if previous_row is not None else None

    from workers.export.shard import iter_dataset_rows
    from workers.learning.fisher import batches_for_rows, compute_fisher
    from workers.learning.fisher_artifact import FisherArtifact as FisherValues
    from workers.learning.fisher_artifact import can_fold, fold
    from workers.learning.lora import attach_adapter
    from workers.learning.replay import reservoir_sample

    limit = params.max_samples or ctx.settings.fisher_max_samples
    # The `train` split only: probe rows are kept out of everything that later cycles train on or
    # are protected by, so forgetting measured on them stays honest.
    rows = reservoir_sample(
        itertools.chain.from_iterable(iter_dataset_rows(ctx.store, key, split="train") for key in keys),
        limit,
        random.Random(0),
    )
    previous = FisherValues.from_bytes(ctx.store.get_bytes(previous_ref[1])) if previous_ref else None
    loaded = load_base(ctx)
    with scratch_dir(ctx) as tmp:
        model = attach_adapter(loaded.model, parent_dir=download_adapter_row(ctx, adapter, Path(tmp)))
        ctx.report_progress({"step": 0, "total": len(rows), "stage": "fisher"})
        batches = batches_for_rows(rows, loaded.tokenizer, batch_size=8, max_length=256)
        new = compute_fisher(model, batches, mode=continual.fisher_mode, space=continual.ewc_space)
    artifact = fold(previous, new, num_samples=len(rows), mode=continual.fisher_mode, space=continual.ewc_space,
                    gamma=continual.ewc_gamma, base_model_id=loaded.base_model, adapter_id=adapter.id,
                    recipe={"name": recipe_name, **continual.to_dict()})
    folded = can_fold(previous, continual.ewc_space, loaded.base_model)
    key = f"{ctx.attempt_prefix(f'fisher/{ctx.job_id}')}/fisher.safetensors"
    ctx.store.put_bytes(key, artifact.to_bytes())  # one object: the put itself is atomic
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(FisherArtifact).where(FisherArtifact.job_id == ctx.job_id)).first()
        if done is None:
            done = FisherArtifact(
                uri=key,
                adapter_id=adapter.id,
                previous_id=previous_ref[0] if folded else None,
                dataset_ids=list(adapter.dataset_ids),
                num_samples=artifact.num_samples,
                mode="online" if folded else "empirical",
                gamma=continual.ewc_gamma,
                base_model=loaded.base_model,
                job_id=ctx.job_id,
            )
            session.add(done)
            session.flush()
        result = {"status": "computed", "fisher_id": done.id, "samples": artifact.num_samples,
                  "adapter_id": adapter.id, "space": artifact.space, "scale": artifact.scale}
        ctx.finish(session, result)  # same transaction: recorded iff this attempt holds the lease
        return result
