"""The `train` job: one continual cycle — continue the parent adapter on a new dataset, publish it.

Effectively-once: the adapter is published under a job-scoped prefix and its row carries the job id
(unique), so a retried job finds its own row and does nothing; a job killed mid-training resumes from
its last checkpoint under `checkpoints/<job id>/`.

What a cycle trains on: the new dataset's taught splits (`train` and `probe`), plus — after a
`continuum rollback` — the datasets the rolled-back version(s) had learnt and the restored parent had
not (`lineage.lost_to_rollback`), unless `CONTINUUM_RETEACH_AFTER_ROLLBACK=false`; either way the
adapter's `notes` and the job result say which. Replay draws only the `train` split of earlier
datasets, in one pass over history per cycle. The Fisher for EWC must belong to the parent adapter,
the base model and the recipe's parameter space: a `fisher_id` that does not is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from common.db.engine import session_scope
from common.db.models import Adapter
from common.db.models import FisherArtifact as FisherRow
from common.db.models import UnitCalibration
from common.errors import RetryableError, ValidationError
from workers.base_model import base_model_id
from workers.context import JobContext
from workers.lineage import (
    current_parent,
    datasets_by_id,
    get_adapter,
    get_dataset,
    latest_fisher_for,
    lost_to_rollback,
    taught_dataset_ids,
)
from workers.model_setup import download_adapter_row, load_base, scratch_dir
from workers.params import parse_params
from workers.train.config import TrainJobParams, nested_settings, train_config
from workers.documents.options import cycle_strategy_name
from workers.train.strategies import CycleStrategy, check_parent_strategy


def _result(adapter: Adapter) -> dict[str, Any]:
    meta = adapter.metadata_ or {}
    return {"status": "trained", "adapter_id": adapter.id, "version": adapter.version, "uri": adapter.uri,
            "retaught_dataset_ids": meta.get("retaught_dataset_ids", []), "notes": meta.get("notes", []),
            "device": meta.get("device"), "peak_memory_mib": meta.get("peak_memory_mib"),
            "strategy": (meta.get("strategy") or {}).get("name", "lora"),
            **({"tiers": meta["train"]["tiers"]} if (meta.get("train") or {}).get("tiers") else {})}


def _version(adapter: Adapter | None) -> str:
    return f"adapter {adapter.id} (v{adapter.version})" if adapter is not None else "a fresh adapter"


def check_fisher_row(row: FisherRow, parent: Adapter | None, base_model: str) -> None:
    """Refuse a Fisher row computed for another adapter or base model (one line, naming the fix)."""
    if parent is None:
        raise ValidationError(f"fisher {row.id} was computed for adapter {row.adapter_id}, but this cycle starts "
                              f"a fresh adapter: drop fisher_id (a fresh adapter has nothing to protect)")
    if row.adapter_id != parent.id:
        raise ValidationError(f"fisher {row.id} was computed for adapter {row.adapter_id}, not this cycle's parent "
                              f"{_version(parent)}: run the fisher step for the parent (or omit fisher_id)")
    if row.base_model != base_model:
        raise ValidationError(f"fisher {row.id} was computed on base model {row.base_model!r}, this cycle trains "
                              f"on {base_model!r}: recompute the Fisher on this base model")


def check_fisher_artifact(fisher_id: int, artifact: Any, parent: Adapter, space: str) -> None:
    """Refuse a stored Fisher of another parameter space (or whose own metadata names another adapter)."""
    if artifact.adapter_id is not None and artifact.adapter_id != parent.id:
        raise ValidationError(f"fisher {fisher_id} records adapter {artifact.adapter_id}, not this cycle's parent "
                              f"{_version(parent)}: run the fisher step for the parent")
    if artifact.space != space:
        raise ValidationError(f"fisher {fisher_id} is in parameter space {artifact.space!r}, the recipe's EWC uses "
                              f"{space!r}: run the fisher step with this train step's recipe and overrides")


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
        lost_ids, rolled_back = lost_to_rollback(session, parent)
        lost = [d for d in datasets_by_id(session, lost_ids) if d.id != dataset.id]
        fisher = None
        if params.fisher_id is not None:
            fisher = session.get(FisherRow, params.fisher_id)
            if fisher is None:
                raise ValidationError(
                    f"fisher {params.fisher_id} does not exist: omit fisher_id or run the fisher step")
        elif parent is not None:
            fisher = latest_fisher_for(session, parent)
        strategy = _strategy_name(ctx, params, dataset, parent)
        check_parent_strategy(strategy, parent)
        calibration = _calibration(ctx, session, params, strategy, parent)
        return {
            "strategy": strategy,
            "calibration": (calibration.id, calibration.uri) if calibration is not None else None,
            "dataset": (dataset.id, dataset.manifest_key),
            "parent": parent,
            "history": [(d.id, d.manifest_key) for d in history],
            "lost": [(d.id, d.manifest_key) for d in lost],
            "rolled_back_versions": [a.version for a in rolled_back],
            "fisher_row": fisher,
            "fisher": (fisher.id, fisher.uri) if fisher is not None else None,
        }


def _strategy_name(ctx: JobContext, params: TrainJobParams, dataset: Any, parent: Adapter | None) -> str:
    """The job's strategy (`cycle_strategy_name`), its options checked before any model loads."""
    from workers.documents.options import strategy_options

    name = cycle_strategy_name(params.strategy, parent, dataset.kind == "documents", ctx.settings)
    strategy_options(name, params.strategy_options)
    return name


def _calibration(ctx: JobContext, session: Any, params: TrainJobParams, strategy: str,
                 parent: Adapter | None) -> UnitCalibration | None:
    """sparse_memory's unit calibration: the one named, else the parent's (its units were chosen against
    it), else the lineage's newest on this base model."""
    if strategy != "sparse_memory":
        if params.calibration_id is not None:
            raise ValidationError(f"calibration_id is for strategy sparse_memory, this cycle's is {strategy!r}: "
                                  f"drop it (set it to null in a resumed pipeline's train step)")
        return None
    if params.calibration_id is None and parent is not None:
        parent_calibration = ((parent.metadata_ or {}).get("strategy") or {}).get("calibration_id")
        if parent_calibration is not None and session.get(UnitCalibration, parent_calibration) is not None:
            params = params.model_copy(update={"calibration_id": parent_calibration})
    lineage, base = params.adapter_name or ctx.settings.adapter_name, base_model_id(ctx.settings)
    if params.calibration_id is not None:
        row = session.get(UnitCalibration, params.calibration_id)
        if row is None:
            raise ValidationError(f"calibration {params.calibration_id} does not exist: omit calibration_id or "
                                  f"run the calibrate step")
        if row.base_model != base:
            raise ValidationError(f"calibration {row.id} was measured on base model {row.base_model!r}, this cycle "
                                  f"trains on {base!r}: run the calibrate step on this base model")
        return row
    row = session.scalars(select(UnitCalibration)
                          .where(UnitCalibration.adapter_name == lineage, UnitCalibration.base_model == base)
                          .order_by(UnitCalibration.id.desc())).first()
    if row is None:
        raise ValidationError(f"sparse_memory needs a unit calibration for lineage {lineage!r} on {base!r}: learn "
                              f"with `continuum documents learn --strategy sparse_memory` (its calibrate step "
                              f"measures one)")
    return row


def _fisher_for_cycle(ctx: JobContext, params: TrainJobParams, inputs: dict[str, Any], continual: Any,
                      notes: list[str]) -> Any:
    """The parent's stored Fisher, checked to belong to this cycle; None when EWC needs none (or has none)."""
    from workers.learning.fisher_artifact import FisherArtifact as FisherValues

    row = inputs["fisher_row"]
    if row is None or not continual.needs_fisher:
        return None
    explicit = params.fisher_id is not None
    check_fisher_row(row, inputs["parent"], base_model_id(ctx.settings))
    artifact = FisherValues.from_bytes(ctx.store.get_bytes(row.uri))
    try:
        check_fisher_artifact(row.id, artifact, inputs["parent"], continual.ewc_space)
    except ValidationError as exc:
        if explicit:
            raise
        # Found by lookup (not asked for): a recipe change is not an error, but EWC cannot use it.
        notes.append(f"ewc off: the parent's newest Fisher does not fit this recipe ({exc})")
        inputs["fisher"] = None
        return None
    return artifact


def taught_rows(store: Any, manifest_keys: list[str]) -> list[dict[str, Any]]:
    """Every taught row (`train` and `probe` splits) of the given datasets, in order."""
    from workers.export.shard import TAUGHT_SPLITS, iter_dataset_rows

    return [row for key in manifest_keys for row in iter_dataset_rows(store, key, split=TAUGHT_SPLITS)]


def run(ctx: JobContext) -> dict[str, Any]:
    params: TrainJobParams = parse_params(ctx.params, TrainJobParams)
    inputs = _plan_inputs(ctx, params)
    if isinstance(inputs, Adapter):
        return _result(inputs)
    from common.ledger.lineage_lock import lineage_lock

    # The online learner writes this lineage too: the two take turns (common.ledger.lineage_lock). The
    # holder is the job id, so a retried attempt of this job gets the lineage back at once.
    lineage = params.adapter_name or ctx.settings.adapter_name
    with lineage_lock(ctx.sessions, lineage, f"train:{ctx.job_id}", ttl_seconds=LOCK_TTL_SECONDS,
                      wait_seconds=LOCK_WAIT_SECONDS, should_stop=ctx.should_stop) as renew:
        return _train(ctx, params, inputs, _every(LOCK_TTL_SECONDS / 4, renew))


LOCK_TTL_SECONDS = 600.0
LOCK_WAIT_SECONDS = 1800.0  # online jobs hold a lineage for seconds; this is a generous bound


def _every(seconds: float, action: Any) -> Any:
    """`action`, called at most once per `seconds` (the renewals ride on progress reports)."""
    import time

    last = [time.monotonic()]

    def throttled() -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            action()

    return throttled


def _train(ctx: JobContext, params: TrainJobParams, inputs: dict[str, Any], renew: Any) -> dict[str, Any]:
    from workers.learning.continual import prepare_cycle, recipe
    from workers.learning.kl import load_parent_as_teacher, unload_teacher
    from workers.learning.lora import LoraSettings, publish_adapter
    from workers.learning.replay import store_history
    from workers.learning.self_replay import base_protection_rows
    from workers.learning.device import peak_memory_mib
    from workers.learning.training import TrainCallbacks, fit

    continual = recipe(params.recipe or ctx.settings.recipe,
                       **{**nested_settings(ctx.settings, params.recipe or ctx.settings.recipe), **params.recipe_overrides})
    train_config(ctx.settings, params.train)  # bad overrides fail here, before the model loads
    dataset_id, manifest_key = inputs["dataset"]
    parent: Adapter | None = inputs["parent"]
    notes: list[str] = []
    retaught: list[int] = []
    if inputs["lost"]:
        lost_ids = [i for i, _ in inputs["lost"]]
        versions = ", ".join(f"v{v}" for v in inputs["rolled_back_versions"])
        if ctx.settings.reteach_after_rollback:
            retaught = lost_ids
            notes.append(f"re-teaching datasets {lost_ids} that rolled-back version(s) {versions} had learnt "
                         f"(CONTINUUM_RETEACH_AFTER_ROLLBACK=false leaves them out)")
        else:
            notes.append(f"datasets {lost_ids} that rolled-back version(s) {versions} had learnt are NOT "
                         f"re-taught (CONTINUUM_RETEACH_AFTER_ROLLBACK=false); this adapter never saw them")
    retaught_keys = [key for i, key in inputs["lost"] if i in retaught]
    new_rows = taught_rows(ctx.store, retaught_keys + [manifest_key])
    # Streamed once per cycle (ReplayMixer keeps one reservoir for every epoch), never loaded whole.
    history = store_history(ctx.store, [key for _, key in inputs["history"]]) if inputs["history"] else None
    fisher = _fisher_for_cycle(ctx, params, inputs, continual, notes)
    strategy = _cycle_strategy(ctx, params, inputs)

    loaded = load_base(ctx)
    # Validated above before any model was loaded; now fitted to the base model's size (epochs, rate).
    config = train_config(ctx.settings, params.train, parameters=sum(p.numel() for p in loaded.model.parameters()))
    with scratch_dir(ctx) as tmp:
        parent_dir = download_adapter_row(ctx, parent, Path(tmp)) if parent is not None else None
        # CONTINUUM_LORA_* then the job's `lora` overrides; `auto` targets resolved for this architecture.
        lora = LoraSettings.from_settings(ctx.settings, params.lora).resolved_for(loaded.model)
        import torch

        torch.manual_seed(config.seed)  # a fresh adapter's initial values come from the global RNG
        model = strategy.attach(loaded.model, lora, parent_dir)
        teacher = None
        if continual.kl_strength > 0 and continual.kl_teacher == "parent" and parent_dir is not None:
            teacher = load_parent_as_teacher(model, str(parent_dir))
        plan = prepare_cycle(
            model,
            new_rows,
            continual,
            history=history,
            fisher=fisher,
            parent_teacher=teacher,
            epochs=config.epochs,
            # Base protection (issue 8 D): the base's own answers to general prompts, cached per base.
            base_rows=base_protection_rows(continual, ctx.store, str(loaded.base_model), model, loaded.tokenizer),
        )

        details: dict[str, Any] = {}

        def progress(step: int, total: int, loss: float, tokens_per_s: float) -> None:
            renew()
            tiers = [{"tier": t["tier"], "updates": t["updates"], "mean_update_norm": round(t["mean_update_norm"], 5)}
                     for t in details.get("tiers", [])]
            ctx.report_progress({"step": step, "total": total, "loss": loss, "tokens_per_s": tokens_per_s,
                                 **({"tiers": tiers} if tiers else {})})

        with strategy.training(model, loaded.tokenizer, new_rows, ctx.store, f"checkpoints/{ctx.job_id}/units.json"):
            result = fit(
                model,
                loaded.tokenizer,
                plan.rows,
                config,
                plan.regularizers,
                TrainCallbacks(progress=progress, stop=ctx.should_stop, details=details.update),
                checkpoint_store=ctx.store,
                checkpoint_prefix=f"checkpoints/{ctx.job_id}",
                tiers=plan.tiers,
            )
        if teacher is not None:
            unload_teacher(model, teacher)  # publish only the trained adapter
        strategy.before_publish(model)
        prefix = ctx.attempt_prefix(f"adapters/{params.adapter_name or ctx.settings.adapter_name}/{ctx.job_id}")
        metadata = {
            "prefix": prefix,
            "base_model": loaded.base_model,
            "parent_version": parent.version if parent is not None else None,
            "parent_id": parent.id if parent is not None else None,
            # The cycle's own dataset stays last (evaluation and the report read it from there).
            "dataset_ids": retaught + [dataset_id],
            "retaught_dataset_ids": retaught,
            "history_dataset_ids": [i for i, _ in inputs["history"]],
            "fisher_id": inputs["fisher"][0] if inputs["fisher"] else None,
            "recipe": {"name": params.recipe or ctx.settings.recipe, **continual.to_dict()},
            "strategy": strategy.metadata(model),
            "notes": notes + plan.notes,
            "lora": strategy.lora_record(model, lora),
            "train_config": config.to_dict(),
            "train": result.to_dict(),
            "device": loaded.device.describe(),
            "peak_memory_mib": peak_memory_mib(loaded.device),
            "job_id": ctx.job_id,
        }
        publish_adapter(ctx.store, prefix, model, metadata, workdir=tmp)
    adapter = _register(ctx, params.adapter_name or ctx.settings.adapter_name, parent, inputs, prefix, metadata)
    ctx.store.delete_prefix(f"checkpoints/{ctx.job_id}/")  # the adapter is durable; checkpoints are not needed
    return _result(adapter)


def _cycle_strategy(ctx: JobContext, params: TrainJobParams, inputs: dict[str, Any]) -> CycleStrategy:
    from workers.documents.options import strategy_options

    parent: Adapter | None = inputs["parent"]
    strategy = CycleStrategy(inputs["strategy"], strategy_options(inputs["strategy"], params.strategy_options),
                             parent_metadata=dict(parent.metadata_ or {}) if parent is not None else {})
    if inputs["calibration"] is not None:
        from workers.calibrate.logic import load_statistics

        strategy.calibration_id, uri = inputs["calibration"]
        strategy.statistics = load_statistics(ctx.store, uri)
    return strategy


def _register(ctx: JobContext, name: str, parent: Adapter | None, inputs: dict, prefix: str,
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
                    # Re-taught datasets are listed too: the lineage has them again (no re-teach loop).
                    dataset_ids=list(metadata["dataset_ids"]),
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
