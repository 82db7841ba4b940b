"""The `online` job: apply a lineage's pending chat turns to its online adapter, in order.

`continuum serve` (with `CONTINUUM_ONLINE=true`) stores each answered turn in `online_turns` and
enqueues an `online` job for the lineage on the `online` queue; the job applies *every* pending turn
in `id` order, so a burst of chat is one job, a duplicate job finds nothing to do, and the order is
the order the turns were stored in whichever worker runs it. While it works it holds the lineage
lock, which a batch cycle's train job also takes: the two never write one lineage at once.

The online adapter's state (LoRA weights, the optimizer's moments, the turn clock, the fact memory and
the id of the last turn applied) is a checkpoint in the object store, `online/<lineage>/state/`,
written before the turns are marked applied. A job that dies after the checkpoint and before the
mark finds the checkpoint's last turn id and marks those turns without learning them twice. The fact
memory's table is a mirror of the checkpoint's, written in the same transaction as the marks. The
first online job of a lineage starts from the adapter production points to (or a fresh LoRA).

Every `CONTINUUM_ONLINE_PUBLISH_EVERY` learnt turns (or `_SECONDS`) the job publishes the state as a
version of the lineage that goes through evaluate → promote (`workers/online/publish.py`); it restarts
from production when the gate refused its version or production moved elsewhere.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from common.db.engine import session_scope
from common.db.models import FactMemory
from common.errors import RetryableError, ValidationError
from common.ledger.lineage_lock import lineage_lock
from common.online.facts import patterns_from_json
from common.online.memory import Fact, MemoryChange, MemoryPolicy
from common.online.store import load_memory, mark_applied, pending_turns, save_change, turns_learnt
from workers.context import JobContext
from workers.params import parse_params

PROBE_PROMPTS = 8  # anchor prompts the stability figures use (their base answers are cached)
LOCK_WAIT_SECONDS = 120.0  # how long a job waits for a batch cycle to give the lineage back


class OnlineJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lineage: str | None = Field(None, description="Lineage whose pending turns to apply; default: CONTINUUM_ADAPTER_NAME.")
    max_turns: int = Field(500, ge=1, description="Most turns one job applies (the rest wait for the next job).")


def state_prefix(lineage: str) -> str:
    return f"online/{lineage}/state"


def policy_of(settings: Any) -> MemoryPolicy:
    return MemoryPolicy(capacity=settings.online_memory_capacity, importance=settings.online_memory_importance,
                        eviction=settings.online_memory_eviction,
                        decay_after_turns=settings.online_memory_decay_after_turns,
                        decay_factor=settings.online_memory_decay, remove_below=settings.online_memory_remove_below)


def run(ctx: JobContext) -> dict[str, Any]:
    params = parse_params(ctx.params, OnlineJobParams)
    lineage = params.lineage or ctx.settings.adapter_name
    policy = policy_of(ctx.settings)
    patterns = patterns_from_json(ctx.settings.online_fact_patterns)
    with lineage_lock(ctx.sessions, lineage, f"online:{ctx.job_id}", ttl_seconds=300, wait_seconds=LOCK_WAIT_SECONDS,
                      should_stop=ctx.should_stop) as renew:
        with session_scope(ctx.sessions) as session:
            pending = [(t.id, list(t.messages), t.response) for t in pending_turns(session, lineage, params.max_turns)]
            clock = turns_learnt(session, lineage)
        if not pending and not _publish_due_when_idle(ctx, lineage):
            with session_scope(ctx.sessions) as session:
                result = {"status": "skipped", "reason": "no pending turns and no version due", "lineage": lineage}
                ctx.finish(session, result, skipped=True)
            return result
        return _apply(ctx, lineage, pending, clock, policy, patterns, renew)


def _publish_due_when_idle(ctx: JobContext, lineage: str) -> bool:
    """No turns to learn: is a version due by time (the sweep's check of an idle lineage)?"""
    from workers.learning.checkpoints import latest_checkpoint, load_checkpoint
    from workers.online.publish import PublishClock

    saved = latest_checkpoint(ctx.store, state_prefix(lineage))
    if saved is None:
        return False
    clock = PublishClock.from_progress(load_checkpoint(ctx.store, saved).progress)
    with session_scope(ctx.sessions) as session:
        clock.resolve(session)
    return clock.due(ctx.settings.online_publish_every, ctx.settings.online_publish_seconds, _now()) is not None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _apply(ctx: JobContext, lineage: str, pending: list[tuple[int, list, str]], clock: int, policy: MemoryPolicy,
           patterns: Any, renew: Any) -> dict[str, Any]:
    from workers.learning.checkpoints import TrainingState, capture_rng, latest_checkpoint, load_checkpoint, save_checkpoint
    from workers.lineage import alias_target
    from workers.online.learner import OnlineConfig, OnlineLearner
    from workers.online.publish import PublishClock, restart_reason
    from workers.online.session import AnchorProbe, OnlineSession

    store = ctx.store
    saved = latest_checkpoint(store, state_prefix(lineage))
    state = load_checkpoint(store, saved) if saved else None
    progress = dict(state.progress) if state else {}
    done_up_to = int(progress.get("last_turn_id", 0))
    already = [t for t in pending if t[0] <= done_up_to]  # learnt by a job that died before marking them
    todo = [t for t in pending if t[0] > done_up_to]
    memory = {f["key"]: Fact(**f) for f in progress.get("memory", [])} if state else None
    publish = PublishClock.from_progress(progress) if state else None
    restart = None
    with session_scope(ctx.sessions) as session:
        if memory is None:
            memory = load_memory(session, lineage)
        if publish is not None:
            publish.resolve(session)
            production = alias_target(session)
            restart = restart_reason(session, production if production is not None and production.name == lineage
                                     else None, publish.anchor_adapter_id)
    if restart is not None:
        state = None  # the weights and moments go; the memory, the turn clock and the marks stay
    loaded, model, lora, start = _model(ctx, lineage, state)
    if publish is None or restart is not None:
        publish = publish or PublishClock()
        publish.restarted(start, done_up_to)
    from workers.train.config import model_size_defaults

    # Many small steps on a few rows each: half the batch cycle's rate (bench/online_facts.py, SmolLM2:
    # 1e-3 kept 0.79 of the right general answers and recalled 0.60; 2e-3 kept 0.74 and recalled 0.60).
    rate = model_size_defaults(sum(p.numel() for p in loaded.model.parameters()))["learning_rate"] / 2
    learner = OnlineLearner(model, loaded.tokenizer, OnlineConfig.from_settings(ctx.settings, rate))
    if state is not None:
        learner.load_optimizer_state(state.optimizer)
    from workers.evaluate.anchors import ANCHOR_PROMPTS
    from workers.learning.self_replay import cached_self_replay_rows

    base_id = str(loaded.base_model)
    learner.protect(cached_self_replay_rows(store, base_id, model, loaded.tokenizer))
    probe_rows = cached_self_replay_rows(store, base_id, model, loaded.tokenizer,
                                         list(ANCHOR_PROMPTS[:PROBE_PROMPTS]), max_new_tokens=24)
    probe = AnchorProbe(learner, [r["prompt"] for r in probe_rows], [r["response"] for r in probe_rows])
    session_state = OnlineSession(learner, policy, patterns, memory, int(progress.get("turns", clock)), probe)
    applied: list[tuple[int, int, str, dict[str, Any]]] = []
    for index, (turn_id, messages, response) in enumerate(todo):
        outcome = session_state.observe_turn(messages, response)
        applied.append((turn_id, outcome.turn, outcome.kind, outcome.as_dict()))
        loss = outcome.learnt["losses"][-1] if outcome.learnt["losses"] else None
        ctx.report_progress({"step": index + 1, "total": len(todo), "stage": "online", "kind": outcome.kind,
                             **({"loss": loss} if loss is not None else {})})
        if index % 20 == 19:
            renew()
    metrics = session_state.metrics()
    learnt_now = sum(1 for *_, r in applied if r["learnt"]["losses"])
    updates = int(progress.get("updates", 0)) + learnt_now
    last_turn_id = max([done_up_to] + [t[0] for t in todo])
    publish.learnt(learnt_now, _now())
    publication = _maybe_publish(ctx, lineage, model, publish, applied, last_turn_id, {
        "base_model": base_id, "lora": lora, "recipe": {"name": "online"}, "job_id": ctx.job_id,
        "device": loaded.device.describe(),
        "online": {"turns": session_state.turns, "updates": updates, "last_turn_id": last_turn_id,
                   "facts": len(memory), "metrics": metrics},
        "notes": [f"online: restarted from production ({restart})"] if restart else [],
    })
    new_progress = {
        # One more than the last save, not the turn count: a save that learnt nothing (a publication, a
        # restart) must not land on the previous checkpoint's name, which is immutable once complete.
        "global_step": int(progress.get("global_step", 0)) + 1, "turns": session_state.turns, "last_turn_id": last_turn_id,
        "updates": updates, "lora": lora, "start_adapter_id": start, "base_model": base_id,
        "memory": [vars(f) for f in memory.values()], "metrics": metrics, "publish": publish.as_dict(),
    }
    if todo or publication is not None or restart is not None:
        adapter = {n: p.detach().to("cpu") for n, p in model.named_parameters() if p.requires_grad}
        renew()
        save_checkpoint(store, state_prefix(lineage), TrainingState(
            adapter=adapter, optimizer=learner.optimizer_state(), scheduler={}, rng=capture_rng(),
            progress=new_progress), keep_last=2)
    result = {"status": "applied", "lineage": lineage, "turns_applied": len(todo), "turns_recovered": len(already),
              "turn_clock": session_state.turns, "updates": updates, "facts": len(memory),
              "kinds": {k: sum(1 for *_, kind, _ in applied if kind == k) for k in ("fact", "question", "chat")},
              "metrics": metrics, "start_adapter_id": start, "unpublished_updates": publish.unpublished_updates,
              **({"restarted": restart} if restart else {})}
    run_id = _finish(ctx, lineage, applied, already, memory, result, publication, renew)
    if run_id is not None:
        _send_evaluate(ctx, run_id)
    return result


def _maybe_publish(ctx: JobContext, lineage: str, model: Any, publish: Any, applied: list, last_turn_id: int,
                   metadata: dict[str, Any]) -> Any:
    """Upload a version when one is due (`workers/online/publish.py`); it is registered by `_finish`."""
    from workers.online.publish import learnt_facts, upload

    reason = publish.due(ctx.settings.online_publish_every, ctx.settings.online_publish_seconds, _now())
    if reason is None:
        return None
    with session_scope(ctx.sessions) as session:
        facts = learnt_facts(session, lineage, publish.anchor_turn_id, last_turn_id, [r for *_, r in applied])
    ctx.report_progress({"stage": f"publishing a version: {reason}"})
    publication = upload(ctx, lineage, model, reason, facts, {**metadata, "online": {
        **metadata["online"], "reason": reason, "facts_in_dataset": len(facts),
        "turns_since_parent": publish.unpublished_updates}})
    publication.parent_id = publish.anchor_adapter_id
    publish.published(ctx.job_id, last_turn_id)
    return publication


def _finish(ctx: JobContext, lineage: str, applied: list, already: list, memory: dict[str, Fact],
            result: dict[str, Any], publication: Any, renew: Any) -> str | None:
    """Marks, the fact table, the version (if any) and the job's end: one transaction. Returns the id
    of the pipeline run to send, if a version was registered."""
    from common.db.models import Adapter, OnlineTurn
    from workers.online.publish import register

    for _attempt in range(5):
        try:
            with session_scope(ctx.sessions) as session:
                renew()
                for turn_id, number, kind, outcome in applied:
                    mark_applied(session, session.get(OnlineTurn, turn_id), number, kind, outcome)
                for turn_id, *_ in already:
                    row = session.get(OnlineTurn, turn_id)
                    mark_applied(session, row, row.turn_number or 0, row.kind or "recovered", {"recovered": True})
                # The table mirrors the memory just checkpointed: whatever it holds beyond that was removed.
                session.execute(delete(FactMemory).where(FactMemory.lineage == lineage,
                                                         FactMemory.key.not_in(list(memory))))
                save_change(session, lineage, MemoryChange(touched=list(memory.values())))
                run_id = None
                final = dict(result)
                if publication is not None:
                    parent = session.get(Adapter, publication.parent_id) if publication.parent_id else None
                    adapter, run_id = register(ctx, session, publication, parent)
                    final["published"] = {"adapter_id": adapter.id, "version": adapter.version,
                                          "pipeline_run_id": run_id, "reason": publication.reason,
                                          "dataset": publication.counts}
                ctx.finish(session, final)
            result.update(final)
            return run_id
        except IntegrityError:
            continue  # another writer took the version number: count again
    raise RetryableError("could not register the online version after 5 tries (heavy contention): retry the job")


def _send_evaluate(ctx: JobContext, run_id: str) -> None:
    """Send the version's evaluate step; if this fails the sweep sends it after its grace period."""
    import logging

    try:
        from common.db.models import PipelineRun
        from common.orchestration.pipeline import enqueue_step
        from workers.dispatch import orchestrator_for

        orch = orchestrator_for(ctx.settings)
        with session_scope(ctx.sessions) as session:
            run = session.get(PipelineRun, run_id)
            session.expunge(run)
        enqueue_step(orch, run, "evaluate", attempt=0)
    except Exception as exc:  # noqa: BLE001 - the run is committed; the sweep sends its step
        logging.getLogger("continuum.online").warning("evaluate of online run %s not sent: %s", run_id, exc)


def _model(ctx: JobContext, lineage: str, state: Any) -> tuple[Any, Any, dict[str, Any], int | None]:
    """(loaded base, model with the online adapter, its LoRA settings, the adapter id it started from)."""
    import torch

    from workers.learning.lora import LoraSettings, attach_adapter, settings_dict
    from workers.lineage import alias_target
    from workers.model_setup import download_adapter_row, load_base

    loaded = load_base(ctx)
    if state is not None:
        lora = LoraSettings(**{**state.progress["lora"], "target_modules": tuple(state.progress["lora"]["target_modules"])})
        model = attach_adapter(loaded.model, lora)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.adapter.items():
                params[name].copy_(value)
        return loaded, model, settings_dict(lora), state.progress.get("start_adapter_id")
    with session_scope(ctx.sessions) as session:
        production = alias_target(session)
        start = production if production is not None and production.name == lineage else None
        if start is not None:
            session.expunge(start)
    lora = LoraSettings.from_settings(ctx.settings).resolved_for(loaded.model)
    torch.manual_seed(0)
    if start is None:
        return loaded, attach_adapter(loaded.model, lora), settings_dict(lora), None
    learnt = ((start.metadata_ or {}).get("strategy") or {}).get("name", "lora")
    if learnt != "lora":
        # sparse_memory's gate and ttt's blend live in the train cycle; an online update would ignore them.
        raise ValidationError(f"production adapter {start.name}@v{start.version} was learnt with strategy {learnt!r}; "
                              f"online learning continues only lora lineages: learn documents with `--strategy lora` or into "
                              f"another lineage (train.adapter_name)")
    from workers.learning.lora import read_metadata

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_adapter_row(ctx, start, Path(tmp))
        model = attach_adapter(loaded.model, lora, folder)
        # The parent keeps its own rank and targets: the online state records those, not the settings'.
        used = read_metadata(folder).get("lora") or settings_dict(lora)
    return loaded, model, used, start.id
