"""Fit a LoRA adapter on feedback rows: validated config → setup → `fit` → `TrainResult` (litgpt's shape).

`fit` runs AdamW (the plain step, or the nested tiered step: `workers.learning.steps`) over the
trainable (LoRA) parameters with gradient accumulation, clipping and a warmup + decay schedule, on length-bucketed batches with the loss on response tokens only. It adds
each regulariser's penalty, reports progress, checks for cancellation, checkpoints every N steps and
resumes from the newest complete checkpoint under its prefix — giving the same adapter an
uninterrupted run would (data order and dropout RNG are restored, not re-drawn).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError, ContinuumError, ValidationError
from common.objectstore.base import ObjectStore
from workers.learning.batching import batch_to, bucket_batches, collate
from workers.learning.checkpoints import (
    TrainingState,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from workers.learning.formatting import EncodedSample, encode_rows
from workers.learning.lora import trainable_parameters
from workers.learning.losses import head_only_supported, response_head_loss, response_loss
from workers.learning.regularizers import Regularizer
from workers.learning.schedule import SCHEDULES
from workers.learning.steps import PlainStep, Stepper, TieredStep
from workers.learning.suppression import suppression_floor
from workers.learning.tiers import TierPlan

Rows = Sequence[dict[str, Any]]
RowSource = Rows | Callable[[int], Rows]  # a list, or epoch -> rows (replay re-draws each epoch)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; every problem is reported at once on construction."""

    learning_rate: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None  # when set, overrides epochs: train exactly this many optimiser steps
    batch_size: int = 8
    grad_accum: int = 1
    max_tokens_per_batch: int | None = None  # optional cap on padded tokens per micro-batch
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 512
    seed: int = 0
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0: only when stopped
    keep_checkpoints: int = 2
    log_every: int = 10
    cancel_check_every: int = 10
    autocast_dtype: str | None = None  # "bfloat16" / "float16": mixed precision over fp32 weights
    logits_for_response_only: bool = True  # skip the LM head on prompt-only positions when nothing needs them
    # Unlikelihood on a thumbs-down row stops once its mean log-prob is this many nats below the base
    # model's (`workers.learning.suppression`); None pushes without end (the pre-issue-8 behaviour).
    suppression_margin: float | None = 2.0
    show_progress: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0 (got {self.learning_rate})")
        if self.max_steps is None and self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 (got {self.max_steps})")
        for name in ("batch_size", "grad_accum", "log_every", "cancel_check_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.suppression_margin is not None and not self.suppression_margin > 0:
            problems.append(f"suppression_margin must be > 0 nats or None (got {self.suppression_margin})")
        if self.max_length < 2:
            problems.append(f"max_length must be >= 2 (got {self.max_length})")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < self.max_length:
            problems.append("max_tokens_per_batch must be >= max_length (one full-length sample must fit)")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            problems.append(f"max_grad_norm must be > 0 or None (got {self.max_grad_norm})")
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            problems.append(f"autocast_dtype must be None, 'bfloat16' or 'float16' (got {self.autocast_dtype!r})")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingStopped(ContinuumError):
    """`fit` stopped because `should_stop()` said so; a checkpoint (if any) lets a later call resume."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint store configured"
        super().__init__(f"training stopped on request at step {step} ({where}); run it again to resume")


@dataclass
class TrainCallbacks:
    """Hooks the job ledger plugs into; pass functions or subclass and override the methods."""

    progress: Callable[[int, int, float, float], None] | None = None
    stop: Callable[[], bool] | None = None
    # Called just before each progress report with what the run's step has to say (the nested tiers'
    # per-tier statistics, {"tiers": [...]}); nothing is called for the plain step.
    details: Callable[[dict[str, Any]], None] | None = None

    def on_progress(self, step: int, total: int, loss: float, tokens_per_s: float) -> None:
        if self.progress is not None:
            self.progress(step, total, loss, tokens_per_s)

    def on_details(self, details: dict[str, Any]) -> None:
        if self.details is not None and details:
            self.details(details)

    def should_stop(self) -> bool:
        return bool(self.stop()) if self.stop is not None else False


@dataclass
class TrainResult:
    """What a `fit` call did; `to_dict()` is what goes into metrics."""

    steps: int
    total_steps: int
    final_loss: float
    loss_curve: list[float]
    tokens_seen: int  # useful (non-padding) tokens processed
    useful_tokens_per_s: float  # excludes the first step (lazy initialisation, allocator warm-up)
    useful_tokens_per_cpu_s: float  # same, per second of this process's CPU time (robust on shared hosts)
    wall_s: float
    regularizer_means: dict[str, float] = field(default_factory=dict)
    penalty_ratio: dict[str, float] = field(default_factory=dict)  # mean penalty / mean task loss
    resumed_from: str | None = None
    last_checkpoint: str | None = None
    tiers: list[dict[str, Any]] = field(default_factory=list)  # nested tiers: per-tier statistics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _EpochData:
    """Encoded samples per epoch: encoded once for a fixed list, re-drawn and encoded for a callable."""

    def __init__(self, rows: RowSource, tokenizer: Any, max_length: int):
        self._source = rows
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._fixed: list[EncodedSample] | None = None
        if not callable(rows):
            self._fixed = self._encode(rows)

    def _encode(self, rows: Rows) -> list[EncodedSample]:
        if len(rows) == 0:
            raise ValidationError("no rows to train on")
        return encode_rows(rows, self._tokenizer, self._max_length)

    def samples(self, epoch: int) -> list[EncodedSample]:
        if self._fixed is not None:
            return self._fixed
        return self._encode(self._source(epoch))  # type: ignore[operator]


def _steps_in_epoch(config: TrainConfig, samples: list[EncodedSample], epoch: int) -> list[list[list[int]]]:
    """The epoch's optimiser steps, each a list of micro-batches (lists of sample indices)."""
    batches = bucket_batches([len(s) for s in samples], config.batch_size, config.seed, epoch,
                             config.max_tokens_per_batch)
    return [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def fit(
    model: Any,
    tokenizer: Any,
    rows: RowSource,
    config: TrainConfig,
    regularizers: Sequence[Regularizer] = (),
    callbacks: TrainCallbacks | None = None,
    checkpoint_store: ObjectStore | None = None,
    checkpoint_prefix: str | None = None,
    tiers: TierPlan | None = None,
) -> TrainResult:
    """Train `model`'s trainable parameters on `rows`; resumes from `checkpoint_prefix` when a checkpoint exists.

    `rows` is a list of exported rows or a function epoch → rows (for an exact resume it must be a
    pure function of the epoch: draw from its own seeded RNG, not the global one). Raises
    `TrainingStopped` after checkpointing when `callbacks.should_stop()`.
    Seeds torch/random/numpy from `config.seed` on a fresh start. `tiers` switches the optimiser step
    to the nested tiered step (`workers.learning.steps.TieredStep`).
    """
    if (checkpoint_store is None) != (checkpoint_prefix is None):
        raise ConfigError("pass both checkpoint_store and checkpoint_prefix, or neither")
    callbacks = callbacks or TrainCallbacks()
    names = [r.name for r in regularizers]
    if len(set(names)) != len(names):
        raise ConfigError(f"regulariser names must be unique (got {names})")
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("the model has no trainable parameters: attach a LoRA adapter before fit()")
    device = next(iter(params.values())).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    need_full_logits = any(getattr(r, "needs_logits", True) for r in regularizers)
    trim_logits = config.logits_for_response_only and not need_full_logits
    head_only = trim_logits and head_only_supported(model)

    data = _EpochData(rows, tokenizer, config.max_length)
    first_samples = data.samples(0)
    steps_per_epoch = len(_steps_in_epoch(config, first_samples, 0))
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch

    stepper: Stepper = (TieredStep(params, config, total_steps, tiers) if tiers is not None
                        else PlainStep(params, config, total_steps))

    # --- resume or start fresh -------------------------------------------------------------------
    epoch, skip_steps, global_step, tokens_seen = 0, 0, 0, 0
    loss_curve: list[Any] = []  # detached 0-dim tensors (no sync per step) or floats from a checkpoint
    reg_sums = {name: 0.0 for name in names}
    task_sum, micro_count = 0.0, 0
    resumed_from = None
    last_checkpoint = None
    checkpoint = latest_checkpoint(checkpoint_store, checkpoint_prefix) if checkpoint_store else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint_store, checkpoint)  # type: ignore[arg-type]
        _restore(state, params, stepper, regularizers)
        p = state.progress
        epoch, skip_steps, global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
        tokens_seen, loss_curve = p["tokens_seen"], list(p["loss_curve"])
        reg_sums.update(p["reg_sums"])
        task_sum, micro_count = p["task_sum"], p["micro_count"]
        resumed_from = last_checkpoint = checkpoint
    else:
        _seed_everything(config.seed)

    def snapshot(step_in_epoch: int) -> TrainingState:
        progress = {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "seed": config.seed,
            "tokens_seen": tokens_seen, "loss_curve": [float(x) for x in loss_curve],
            "reg_sums": {k: float(v) for k, v in reg_sums.items()}, "task_sum": float(task_sum),
            "micro_count": micro_count, "total_steps": total_steps, "config": config.to_dict(),
        }
        optimizer_state, scheduler_state, step_tensors, step_plain = stepper.state()
        return TrainingState(
            adapter={n: p.detach() for n, p in params.items()},
            optimizer=optimizer_state,
            scheduler=scheduler_state,
            rng=capture_rng(),
            progress=progress,
            regularizers={r.name: r.state_dict() for r in regularizers},
            step_tensors=step_tensors,
            step_state=step_plain,
        )

    autocast = (
        torch.autocast(device.type, dtype=getattr(torch, config.autocast_dtype))
        if config.autocast_dtype else contextlib.nullcontext()
    )
    was_training = model.training
    model.train()
    progress_bar = _progress_bar(config.show_progress, total_steps, global_step)
    start, start_cpu = time.perf_counter(), time.process_time()
    mark_time, mark_cpu, mark_tokens, window_time, window_tokens = None, 0.0, 0, start, tokens_seen
    try:
        while global_step < total_steps and (config.max_steps is not None or epoch < config.epochs):
            samples = first_samples if epoch == 0 else data.samples(epoch)
            steps = _steps_in_epoch(config, samples, epoch)
            for step_in_epoch in range(skip_steps, len(steps)):
                if global_step >= total_steps:
                    break
                micro_batches = steps[step_in_epoch]
                step_loss = torch.zeros((), device=device)
                for indices in micro_batches:
                    chosen = [samples[i] for i in indices]
                    tokens_seen += sum(len(s) for s in chosen)
                    batch = batch_to(collate(chosen, pad_id), device)
                    flagged = batch["unlikelihood"] if any(s.unlikelihood for s in chosen) else None
                    with autocast:
                        floor = suppression_floor(model, batch, flagged, config.suppression_margin)
                        if head_only:  # LM head only where there is loss; outputs carry no logits
                            task, outputs = response_head_loss(model, batch, flagged, floor), None
                        else:
                            keep = 0  # 0 = all positions; else the last `keep` (from the earliest response)
                            if trim_logits:
                                width = batch["input_ids"].size(1)
                                keep = width - min(s.prompt_len for s in chosen) + 1
                                keep = 0 if keep >= width else keep
                            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            use_cache=False, logits_to_keep=keep)
                            task = response_loss(outputs.logits, batch["labels"], batch["sample_weight"], flagged,
                                                 stop_below=floor)
                        total = task.loss
                        for reg in regularizers:
                            penalty = reg.loss(model, batch, outputs)
                            total = total + penalty
                            reg_sums[reg.name] = reg_sums[reg.name] + penalty.detach()
                    (total / len(micro_batches)).backward()
                    step_loss += task.loss.detach()
                    task_sum = task_sum + task.loss.detach()
                    micro_count += 1
                stepper.step()
                loss_curve.append(step_loss / len(micro_batches))
                global_step += 1
                if mark_time is None:  # throughput excludes step 1 (lazy init, allocator warm-up)
                    mark_time, mark_cpu, mark_tokens = time.perf_counter(), time.process_time(), tokens_seen
                if progress_bar is not None:
                    progress_bar.update(1)
                if global_step % config.log_every == 0 or global_step == total_steps:
                    now = time.perf_counter()
                    rate = (tokens_seen - window_tokens) / max(now - window_time, 1e-9)
                    window_time, window_tokens = now, tokens_seen
                    loss_value = float(loss_curve[-1])
                    tier_stats = stepper.stats()
                    if tier_stats:
                        callbacks.on_details({"tiers": tier_stats})
                    callbacks.on_progress(global_step, total_steps, loss_value, rate)
                    if progress_bar is not None:
                        progress_bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{rate:.0f}")
                position = step_in_epoch + 1
                if config.checkpoint_every and global_step % config.checkpoint_every == 0 and checkpoint_store:
                    last_checkpoint = save_checkpoint(checkpoint_store, checkpoint_prefix, snapshot(position),
                                                      config.keep_checkpoints)
                if global_step % config.cancel_check_every == 0 and callbacks.should_stop():
                    if checkpoint_store is not None:
                        last_checkpoint = save_checkpoint(checkpoint_store, checkpoint_prefix, snapshot(position),
                                                          config.keep_checkpoints)
                    raise TrainingStopped(global_step, last_checkpoint if checkpoint_store else None)
            epoch += 1
            skip_steps = 0
        stepper.finish()  # a tiered step applies what its slow tiers collected since their last update
    finally:
        if progress_bar is not None:
            progress_bar.close()
        model.train(was_training)
        for reg in regularizers:  # e.g. the surprise term's forward hooks: gone once training ends
            close = getattr(reg, "close", None)
            if close is not None:
                close()

    end, end_cpu = time.perf_counter(), time.process_time()
    if mark_time is not None and global_step > 1 and end > mark_time:
        rate = (tokens_seen - mark_tokens) / (end - mark_time)
        cpu_rate = (tokens_seen - mark_tokens) / max(end_cpu - mark_cpu, 1e-9)
    else:
        rate = tokens_seen / max(end - start, 1e-9)
        cpu_rate = tokens_seen / max(end_cpu - start_cpu, 1e-9)
    curve = [float(x) for x in loss_curve]
    task_mean = float(task_sum) / max(micro_count, 1)
    reg_means = {k: float(v) / max(micro_count, 1) for k, v in reg_sums.items()}
    return TrainResult(
        steps=global_step,
        total_steps=total_steps,
        final_loss=curve[-1] if curve else math.nan,
        loss_curve=curve,
        tokens_seen=tokens_seen,
        useful_tokens_per_s=rate,
        useful_tokens_per_cpu_s=cpu_rate,
        wall_s=end - start,
        regularizer_means=reg_means,
        penalty_ratio={k: v / task_mean if task_mean else math.nan for k, v in reg_means.items()},
        resumed_from=resumed_from,
        last_checkpoint=last_checkpoint,
        tiers=stepper.stats(),
    )


def _restore(state: TrainingState, params: dict[str, torch.nn.Parameter], stepper: Stepper,
             regularizers: Sequence[Regularizer]) -> None:
    missing = sorted(set(params) ^ set(state.adapter))
    if missing:
        raise ConfigError(f"checkpoint does not match this adapter (parameters differ: {missing[:3]}…); "
                          "use a fresh checkpoint prefix")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state.adapter[name])
    try:
        stepper.load_state(state.optimizer, state.scheduler, state.step_tensors, state.step_state)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"checkpoint does not match this run's optimiser step ({exc}); "
                          "use a fresh checkpoint prefix") from None
    for reg in regularizers:
        reg.load_state_dict(state.regularizers.get(reg.name, {}))
    restore_rng(state.rng)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step")
