"""Where unlikelihood stops: a floor under each thumbs-down response's mean log-prob.

Unlikelihood on a disliked answer has no natural end (`losses` module docstring): each epoch, and
each later cycle that replays the row, pushes it further, and the adapter moves with it.
The floor is the *base* model's mean per-token log-prob of the disliked response minus
`margin` nats: once the student is that far below the base, the row stops contributing.

Why the base and not the parent: the floor must exist for every flagged row in every epoch, also
thumbs-down rows replayed from earlier datasets, which the parent may already have suppressed. The
base is always at hand (the adapter switched off, no second copy of the weights), computed per batch
on the flagged rows only, so nothing is stored and a resumed run computes the same floors. On a first
cycle the parent is the base, so "fell by at least `margin` against the parent" holds exactly.
"""

from __future__ import annotations

from typing import Any

import torch



def base_mean_logprob(model: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """(B,) the base model's mean response-token log-prob for the `rows` (B,) bool; 0 elsewhere."""
    from workers.learning.kl import teacher_logits

    from workers.learning.losses import mean_response_logprob_per_row

    out = torch.zeros(rows.shape[0], device=batch["input_ids"].device)
    picked = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "labels")}
    out[rows] = mean_response_logprob_per_row(teacher_logits(model, picked, "base"), picked["labels"])
    return out


def suppression_floor(model: Any, batch: dict[str, torch.Tensor], flagged: torch.Tensor | None,
                      margin: float | None) -> torch.Tensor | None:
    """(B,) the log-prob below which each flagged row stops being pushed, or None (no bound: no
    flagged row, `margin` None, or a model without an adapter to switch off)."""
    if flagged is None or margin is None or not hasattr(model, "disable_adapter"):
        return None
    return base_mean_logprob(model, batch, flagged) - margin
