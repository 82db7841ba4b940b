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

    The loop reads setup → step → report → checkpoint: `_Run` holds what a run needs and where it is
    (`_Tally`, checkpointed whole), `_Throughput` the clocks.
    """
    if (checkpoint_store is None) != (checkpoint_prefix is None):
        raise ConfigError("pass both checkpoint_store and checkpoint_prefix, or neither")
    callbacks = callbacks or TrainCallbacks()
    run = _Run(model, tokenizer, rows, config, regularizers, tiers)
    run.resume_or_start(checkpoint_store, checkpoint_prefix)
    tally = run.tally
    clock = _Throughput(tally.tokens_seen)
    was_training = model.training
    model.train()
    progress_bar = _progress_bar(config.show_progress, run.total_steps, tally.global_step)
    try:
        while run.more_to_do():
            samples, steps = run.epoch_plan()
            for position in range(tally.step_in_epoch, len(steps)):
                if tally.global_step >= run.total_steps:
                    break
                run.train_step(samples, steps[position])  # forward, backward, the optimiser step
                tally.step_in_epoch = position + 1
                clock.step_done(tally.tokens_seen)
                if progress_bar is not None:
                    progress_bar.update(1)
                if tally.global_step % config.log_every == 0 or tally.global_step == run.total_steps:
                    _report(run, clock, callbacks, progress_bar)
                if config.checkpoint_every and tally.global_step % config.checkpoint_every == 0 and checkpoint_store:
                    run.save_checkpoint(checkpoint_store, checkpoint_prefix)  # type: ignore[arg-type]
                if tally.global_step % config.cancel_check_every == 0 and callbacks.should_stop():
                    if checkpoint_store is not None:
                        run.save_checkpoint(checkpoint_store, checkpoint_prefix)  # type: ignore[arg-type]
                    raise TrainingStopped(tally.global_step, run.last_checkpoint if checkpoint_store else None)
            tally.epoch += 1
            tally.step_in_epoch = 0
        run.stepper.finish()  # a tiered step applies what its slow tiers collected since their last update
    finally:
        if progress_bar is not None:
            progress_bar.close()
        model.train(was_training)
        for reg in regularizers:  # e.g. the surprise term's forward hooks: gone once training ends
            close = getattr(reg, "close", None)
            if close is not None:
                close()
    return run.result(clock)


@dataclass
class _Tally:
    """Where a run is and what it has summed: saved in and restored from a checkpoint as one piece."""

    epoch: int = 0
    step_in_epoch: int = 0  # the next step of `epoch` to run
    global_step: int = 0
    tokens_seen: int = 0
    loss_curve: list[Any] = field(default_factory=list)  # 0-dim tensors (no sync per step) or floats
    reg_sums: dict[str, Any] = field(default_factory=dict)
    task_sum: Any = 0.0
    micro_count: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "tokens_seen": self.tokens_seen, "loss_curve": [float(x) for x in self.loss_curve],
                "reg_sums": {k: float(v) for k, v in self.reg_sums.items()}, "task_sum": float(self.task_sum),
                "micro_count": self.micro_count}

    @classmethod
    def from_json(cls, saved: dict[str, Any], names: Sequence[str]) -> _Tally:
        fields = {k: saved[k] for k in ("epoch", "step_in_epoch", "global_step", "tokens_seen", "task_sum",
                                         "micro_count")}
        return cls(loss_curve=list(saved["loss_curve"]), reg_sums={**dict.fromkeys(names, 0.0), **saved["reg_sums"]},
                   **fields)


class _Throughput:
    """Useful tokens per second: over the whole run without step 1 (lazy initialisation, allocator
    warm-up), and per progress window."""

    def __init__(self, tokens_seen: int):
        self.start, self.start_cpu = time.perf_counter(), time.process_time()
        self.start_tokens = tokens_seen
        self.mark: tuple[float, float, int] | None = None  # (wall, cpu, tokens) after the first step
        self.window_time, self.window_tokens = self.start, tokens_seen
        self.steps = 0

    def step_done(self, tokens_seen: int) -> None:
        self.steps += 1
        if self.mark is None:
            self.mark = (time.perf_counter(), time.process_time(), tokens_seen)

    def window_rate(self, tokens_seen: int) -> float:
        now = time.perf_counter()
        rate = (tokens_seen - self.window_tokens) / max(now - self.window_time, 1e-9)
        self.window_time, self.window_tokens = now, tokens_seen
        return rate

    def rates(self, tokens_seen: int) -> tuple[float, float, float]:
        """(tokens/s, tokens per CPU second, wall seconds) for the run so far."""
        end, end_cpu = time.perf_counter(), time.process_time()
        if self.mark is not None and self.steps > 1 and end > self.mark[0]:
            wall, cpu, tokens = self.mark
            return ((tokens_seen - tokens) / (end - wall), (tokens_seen - tokens) / max(end_cpu - cpu, 1e-9),
                    end - self.start)
        return (tokens_seen / max(end - self.start, 1e-9), tokens_seen / max(end_cpu - self.start_cpu, 1e-9),
                end - self.start)


class _Run:
    """Setup and one step of `fit`: the parameters, data, optimiser step, regularisers and the tally."""

    def __init__(self, model: Any, tokenizer: Any, rows: RowSource, config: TrainConfig,
                 regularizers: Sequence[Regularizer], tiers: TierPlan | None):
        names = [r.name for r in regularizers]
        if len(set(names)) != len(names):
            raise ConfigError(f"regulariser names must be unique (got {names})")
        self.params = trainable_parameters(model)
        if not self.params:
            raise ConfigError("the model has no trainable parameters: attach a LoRA adapter before fit()")
        self.model, self.config, self.regularizers, self.names = model, config, regularizers, names
        self.device = next(iter(self.params.values())).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        need_full_logits = any(getattr(r, "needs_logits", True) for r in regularizers)
        self.trim_logits = config.logits_for_response_only and not need_full_logits
        self.head_only = self.trim_logits and head_only_supported(model)
        self.data = _EpochData(rows, tokenizer, config.max_length)
        self.first_samples = self.data.samples(0)
        steps_per_epoch = len(_steps_in_epoch(config, self.first_samples, 0))
        self.total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
        self.stepper: Stepper = (TieredStep(self.params, config, self.total_steps, tiers) if tiers is not None
                                 else PlainStep(self.params, config, self.total_steps))
        self.autocast = (torch.autocast(self.device.type, dtype=getattr(torch, config.autocast_dtype))
                         if config.autocast_dtype else contextlib.nullcontext())
        self.tally = _Tally(reg_sums=dict.fromkeys(names, 0.0))
        self.resumed_from: str | None = None
        self.last_checkpoint: str | None = None

    # ------------------------------------------------------------------ setup

    def resume_or_start(self, store: ObjectStore | None, prefix: str | None) -> None:
        checkpoint = latest_checkpoint(store, prefix) if store is not None and prefix is not None else None
        if checkpoint is None:
            _seed_everything(self.config.seed)
            return
        state = load_checkpoint(store, checkpoint)  # type: ignore[arg-type]
        _restore(state, self.params, self.stepper, self.regularizers)
        self.tally = _Tally.from_json(state.progress, self.names)
        self.resumed_from = self.last_checkpoint = checkpoint

    def more_to_do(self) -> bool:
        return self.tally.global_step < self.total_steps and (
            self.config.max_steps is not None or self.tally.epoch < self.config.epochs)

    def epoch_plan(self) -> tuple[list[EncodedSample], list[list[list[int]]]]:
        epoch = self.tally.epoch
        samples = self.first_samples if epoch == 0 else self.data.samples(epoch)
        return samples, _steps_in_epoch(self.config, samples, epoch)

    # ------------------------------------------------------------------ step

    def train_step(self, samples: list[EncodedSample], micro_batches: list[list[int]]) -> None:
        tally = self.tally
        step_loss = torch.zeros((), device=self.device)
        for indices in micro_batches:
            chosen = [samples[i] for i in indices]
            tally.tokens_seen += sum(len(s) for s in chosen)
            batch = batch_to(collate(chosen, self.pad_id), self.device)
            task, total = self._losses(batch, chosen)
            (total / len(micro_batches)).backward()
            step_loss += task.detach()
            tally.task_sum = tally.task_sum + task.detach()
            tally.micro_count += 1
        self.stepper.step()
        tally.loss_curve.append(step_loss / len(micro_batches))
        tally.global_step += 1

    def _losses(self, batch: dict[str, torch.Tensor], chosen: list[EncodedSample]) -> tuple[torch.Tensor, torch.Tensor]:
        """The task loss of one micro-batch and the total with every regulariser's term (each summed
        into the tally under its name)."""
        model, config = self.model, self.config
        flagged = batch["unlikelihood"] if any(s.unlikelihood for s in chosen) else None
        with self.autocast:
            floor = suppression_floor(model, batch, flagged, config.suppression_margin)
            if self.head_only:  # LM head only where there is loss; outputs carry no logits
                task, outputs = response_head_loss(model, batch, flagged, floor), None
            else:
                keep = 0  # 0 = all positions; else the last `keep` (from the earliest response)
                if self.trim_logits:
                    width = batch["input_ids"].size(1)
                    keep = width - min(s.prompt_len for s in chosen) + 1
                    keep = 0 if keep >= width else keep
                outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                use_cache=False, logits_to_keep=keep)
                task = response_loss(outputs.logits, batch["labels"], batch["sample_weight"], flagged,
                                     stop_below=floor)
            total = task.loss
            for reg in self.regularizers:
                if getattr(reg, "uses_task_loss", False):  # the surprise term differentiates it
                    penalty = reg.loss(model, batch, outputs, task_loss=task.loss)
                else:
                    penalty = reg.loss(model, batch, outputs)
                total = total + penalty
                self.tally.reg_sums[reg.name] = self.tally.reg_sums[reg.name] + penalty.detach()
        return task.loss, total

    # ------------------------------------------------------------------ checkpoint and result

    def save_checkpoint(self, store: ObjectStore, prefix: str) -> None:
        self.last_checkpoint = save_checkpoint(store, prefix, self.snapshot(), self.config.keep_checkpoints)

    def snapshot(self) -> TrainingState:
        optimizer_state, scheduler_state, step_tensors, step_plain = self.stepper.state()
        progress = {**self.tally.as_json(), "seed": self.config.seed, "total_steps": self.total_steps,
                    "config": self.config.to_dict()}
        return TrainingState(
            adapter={n: p.detach() for n, p in self.params.items()},
            optimizer=optimizer_state,
            scheduler=scheduler_state,
            rng=capture_rng(),
            progress=progress,
            regularizers={r.name: r.state_dict() for r in self.regularizers},
            step_tensors=step_tensors,
            step_state=step_plain,
        )

    def result(self, clock: _Throughput) -> TrainResult:
        tally = self.tally
        rate, cpu_rate, wall = clock.rates(tally.tokens_seen)
        curve = [float(x) for x in tally.loss_curve]
        task_mean = float(tally.task_sum) / max(tally.micro_count, 1)
        reg_means = {k: float(v) / max(tally.micro_count, 1) for k, v in tally.reg_sums.items()}
        return TrainResult(
            steps=tally.global_step,
            total_steps=self.total_steps,
            final_loss=curve[-1] if curve else math.nan,
            loss_curve=curve,
            tokens_seen=tally.tokens_seen,
            useful_tokens_per_s=rate,
            useful_tokens_per_cpu_s=cpu_rate,
            wall_s=wall,
            regularizer_means=reg_means,
            penalty_ratio={k: v / task_mean if task_mean else math.nan for k, v in reg_means.items()},
            resumed_from=self.resumed_from,
            last_checkpoint=self.last_checkpoint,
            tiers=self.stepper.stats(),
        )


def _report(run: _Run, clock: _Throughput, callbacks: TrainCallbacks, progress_bar: Any) -> None:
    """Progress to the callbacks (the job ledger, Flower) and the bar."""
    rate = clock.window_rate(run.tally.tokens_seen)
    loss_value = float(run.tally.loss_curve[-1])
    tier_stats = run.stepper.stats()
    if tier_stats:
        callbacks.on_details({"tiers": tier_stats})
    callbacks.on_progress(run.tally.global_step, run.total_steps, loss_value, rate)
    if progress_bar is not None:
        progress_bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{rate:.0f}")


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
