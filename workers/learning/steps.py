"""The optimiser step of `training.fit`, pluggable: the plain AdamW step and the tiered (nested) step.

`fit` backpropagates every micro-batch of a step, then calls `step()` once; a stepper clips, updates,
advances the LR schedule and clears the gradients. Its whole state (optimizer, schedule, the tiered
step's accumulators and counters) goes into training checkpoints through `state()` / `load_state()`,
so a resumed run equals an uninterrupted one whichever step it uses, and `stats()` is what the run
reports about it (`TrainResult.tiers`).

Tiered step: one AdamW whose parameter groups are the tiers. Adam's moments and step count are per
parameter, so each tier has its own optimizer state, advanced only at its own updates. A tier with
frequency f collects the (clipped) gradient of each step into an accumulator and, every f-th step,
applies the MEAN of the f gradients: a step on a batch f times larger, at the same learning rate, and
not f times larger a step (the sum would be). Nothing is dropped: at the end of training `finish()`
applies what a slow tier collected since its last update (the mean of those steps). Between its updates
a slow tier's gradient is None, so AdamW leaves its parameters and state untouched.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from workers.learning.schedule import build_scheduler
from workers.learning.tiers import TierPlan, module_of


class Stepper(Protocol):
    def step(self) -> None: ...

    def finish(self) -> None: ...

    def state(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, optimizer: dict[str, Any], scheduler: dict[str, Any],
                   tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None: ...

    def stats(self) -> list[dict[str, Any]]: ...


class PlainStep:
    """AdamW over every trainable parameter, gradient clipping, warmup + decay schedule."""

    def __init__(self, params: dict[str, torch.nn.Parameter], config: Any, total_steps: int,
                 groups: list[list[torch.nn.Parameter]] | None = None):
        self.params = params
        self.max_grad_norm = config.max_grad_norm
        param_groups = [{"params": g} for g in groups] if groups is not None else [{"params": list(params.values())}]
        self.optimizer = torch.optim.AdamW(param_groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, config.warmup_steps, total_steps, config.schedule,
                                         config.min_lr_ratio)

    def _clip(self) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.max_grad_norm, foreach=True)

    def step(self) -> None:
        self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def finish(self) -> None:
        """Nothing is pending after a plain step."""

    def state(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        return self.optimizer.state_dict(), self.scheduler.state_dict(), {}, {}

    def load_state(self, optimizer: dict[str, Any], scheduler: dict[str, Any],
                   tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)

    def stats(self) -> list[dict[str, Any]]:
        return []


class TieredStep(PlainStep):
    """Tiers updated every `frequencies[t]` steps with accumulated (mean) gradients (module docstring)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], config: Any, total_steps: int, plan: TierPlan,
                 accumulate: bool = True):
        missing = sorted(set(params) - set(plan.assignment))
        if missing:
            raise ValueError(f"tier plan has no tier for {missing[:3]}")
        self.plan = plan
        # accumulate=False is the seed system's trap (a slow tier learns from only the step it updates
        # at); kept to measure what accumulation buys, never a recipe default.
        self.accumulate = accumulate
        self.tier_names: list[list[str]] = [[] for _ in plan.frequencies]
        for name in params:
            self.tier_names[plan.assignment[name]].append(name)
        super().__init__(params, config, total_steps,
                         groups=[[params[n] for n in names] for names in self.tier_names])
        self.accumulators = {n: torch.zeros_like(p) for n, p in params.items()}
        self.pending = [0] * len(plan.frequencies)  # steps collected since the tier's last update
        self.steps_seen = 0
        self.updates = [0] * len(plan.frequencies)
        self.update_norm_sums = [0.0] * len(plan.frequencies)

    def step(self) -> None:
        self._clip()
        self.steps_seen += 1
        due = [self.steps_seen % f == 0 for f in self.plan.frequencies]
        with torch.no_grad():
            for tier, names in enumerate(self.tier_names):
                if due[tier]:
                    if self.pending[tier]:  # this step's gradient joins the collected ones: their mean
                        for name in names:
                            self._mean_into_grad(name, self.pending[tier])
                    continue
                for name in names:
                    grad = self.params[name].grad
                    if grad is not None and self.accumulate:
                        self.accumulators[name].add_(grad)
                    self.params[name].grad = None  # AdamW skips it: no update, no state change
                if self.accumulate:
                    self.pending[tier] += 1
        self._update(due)
        self.scheduler.step()

    def finish(self) -> None:
        """Apply what slow tiers collected since their last update (the mean of those steps)."""
        due = [count > 0 for count in self.pending]
        if not any(due):
            return
        with torch.no_grad():
            for tier, names in enumerate(self.tier_names):
                for name in names:
                    self.params[name].grad = None
                    if due[tier]:
                        self._mean_into_grad(name, self.pending[tier] - 1)
        self._update(due)

    def _mean_into_grad(self, name: str, collected: int) -> None:
        """grad ← (accumulated + grad) / (collected + 1); the accumulator is emptied."""
        param, acc = self.params[name], self.accumulators[name]
        if param.grad is None:
            param.grad = acc.clone()
        else:
            param.grad.add_(acc)
        param.grad.div_(collected + 1)
        acc.zero_()

    def _update(self, due: list[bool]) -> None:
        before = {n: self.params[n].detach().clone() for tier, names in enumerate(self.tier_names) if due[tier]
                  for n in names}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for tier, names in enumerate(self.tier_names):
                if not due[tier]:
                    continue
                squared = sum(float((self.params[n] - before[n]).pow(2).sum()) for n in names)
                self.update_norm_sums[tier] += squared ** 0.5
                self.updates[tier] += 1
                self.pending[tier] = 0

    def state(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        optimizer, scheduler, _, _ = super().state()
        tensors = {f"accumulator/{n}": t for n, t in self.accumulators.items()}
        plain = {"pending": list(self.pending), "steps_seen": self.steps_seen, "updates": list(self.updates),
                 "update_norm_sums": list(self.update_norm_sums), "frequencies": list(self.plan.frequencies),
                 "assignment": dict(self.plan.assignment)}
        return optimizer, scheduler, tensors, plain

    def load_state(self, optimizer: dict[str, Any], scheduler: dict[str, Any],
                   tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
        if list(plain.get("frequencies", [])) != list(self.plan.frequencies) or \
                plain.get("assignment") != self.plan.assignment:
            raise ValueError("the checkpoint was written with other nested tiers: use a fresh checkpoint prefix")
        super().load_state(optimizer, scheduler, tensors, plain)
        with torch.no_grad():
            for name, acc in self.accumulators.items():
                acc.copy_(tensors[f"accumulator/{name}"])
        self.pending = list(plain["pending"])
        self.steps_seen = int(plain["steps_seen"])
        self.updates = list(plain["updates"])
        self.update_norm_sums = [float(x) for x in plain["update_norm_sums"]]

    def stats(self) -> list[dict[str, Any]]:
        return [
            {"tier": tier, "frequency": freq, "parameters": sum(self.params[n].numel() for n in names),
             "modules": len({module_of(n) for n in names}), "updates": self.updates[tier],
             "mean_update_norm": self.update_norm_sums[tier] / self.updates[tier] if self.updates[tier] else 0.0}
            for tier, (freq, names) in enumerate(zip(self.plan.frequencies, self.tier_names))
        ]
