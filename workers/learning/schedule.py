"""Learning-rate schedule: linear warmup, then cosine, linear or constant decay (a torch LambdaLR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class WarmupDecay:
    """LR multiplier; a plain object whose fields are its whole state (LambdaLR saves them as JSON-ready data)."""

    warmup_steps: int
    total_steps: int
    kind: str = "cosine"
    min_ratio: float = 0.1  # decay ends at min_ratio * lr, not 0: the last steps still learn

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, kind: str = "cosine",
                    min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup_steps, total_steps, kind, min_ratio))
