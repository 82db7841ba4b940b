"""The task loss: cross-entropy on response tokens only, weighted per sample.

Each sample's loss is the mean over its own response tokens (so a long answer does not outweigh a
short one), times its export weight; the batch loss is the mean over samples. Samples flagged
`unlikelihood` (thumbs-down under that policy) use -log(1 - p(token)) instead, which pushes those
tokens down without the unbounded gradient of negated cross-entropy.

Unlikelihood alone never stops: every step, and every later cycle that replays the row, pushes
the disliked answer further down, moving the adapter for nothing once the answer is gone.
`stop_below` (B,) bounds it: a flagged sample whose mean response log-prob is already below its
floor contributes nothing (`workers.learning.suppression` sets the floor at the base model's mean
log-prob minus a margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.learning.formatting import IGNORE_INDEX


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for the softmax (half precisions lose too much); float64 stays."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()

# 1 - p is clamped away from 0 so a token the model is already sure of gives a finite loss.
_MIN_ONE_MINUS_P = 1e-5


@dataclass
class LossOutput:
    loss: torch.Tensor  # () the value to backpropagate
    per_sample: torch.Tensor  # (B,) weighted per-sample losses, detached, for logging
    response_tokens: torch.Tensor  # (B,) number of tokens that carried loss


def response_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor,
    unlikelihood: torch.Tensor | None = None,
    token_weight: torch.Tensor | None = None,
    stop_below: torch.Tensor | None = None,
) -> LossOutput:
    """Weighted response-only loss of a causal LM batch.

    logits (B, K, V) may cover only the last K positions of the (B, T) labels (a model run with
    `logits_to_keep=K`); position t predicts token t + 1. token_weight (B, T), when given, multiplies
    each token's term (importance weighting). stop_below (B,): see the module docstring.
    """
    batch, width = labels.shape
    keep = logits.size(1)
    if keep > width:
        raise ValueError(f"logits cover {keep} positions but labels only {width}")
    targets = labels[:, width - keep + 1 :]  # (B, K-1) the tokens each kept position predicts
    pred = logits[:, :-1, :]  # (B, K-1, V)
    mask = targets != IGNORE_INDEX  # (B, K-1)
    nll = F.cross_entropy(
        _wide(pred.reshape(-1, pred.size(-1))), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(batch, -1)  # (B, K-1) −log p(token); 0 where masked

    terms = nll
    if unlikelihood is not None:  # callers pass None when no sample is flagged (saves a device sync)
        p = torch.exp(-nll)  # (B, K-1)
        unlikely = -torch.log(torch.clamp(1.0 - p, min=_MIN_ONE_MINUS_P))  # (B, K-1)
        terms = torch.where(unlikelihood[:, None], unlikely, nll)
    maskf = mask.to(terms.dtype)
    counts = mask.sum(dim=1)  # (B,)
    if unlikelihood is not None and stop_below is not None:
        mean_logprob = -(nll * maskf).sum(dim=1) / counts.clamp(min=1)  # (B,)
        sample_weight = sample_weight * _still_pushing(unlikelihood, mean_logprob, stop_below)
    if token_weight is not None:
        maskf = maskf * token_weight[:, width - keep + 1 :].to(terms.dtype)
    per_sample = (terms * maskf).sum(dim=1) / counts.clamp(min=1)  # (B,)
    weighted = per_sample * sample_weight.to(per_sample.dtype)  # (B,)
    return LossOutput(loss=weighted.mean(), per_sample=weighted.detach(), response_tokens=counts)


def selected_response_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    batch_size: int,
    sample_weight: torch.Tensor,
    unlikelihood: torch.Tensor | None = None,
    token_weight: torch.Tensor | None = None,
    stop_below: torch.Tensor | None = None,
) -> LossOutput:
    """The same loss as `response_loss`, from logits computed only at the N positions that carry loss.

    logits (N, V) predict targets (N,); rows (N,) says which sample each belongs to; token_weight (N,).
    """
    nll = F.cross_entropy(_wide(logits), targets, reduction="none")  # (N,)
    terms = nll
    counts = torch.bincount(rows, minlength=batch_size)  # (B,)
    if unlikelihood is not None:
        unlikely = -torch.log(torch.clamp(1.0 - torch.exp(-nll), min=_MIN_ONE_MINUS_P))  # (N,)
        terms = torch.where(unlikelihood[rows], unlikely, nll)
        if stop_below is not None:
            nll_sums = torch.zeros(batch_size, dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
            mean_logprob = -nll_sums / counts.clamp(min=1)  # (B,)
            sample_weight = sample_weight * _still_pushing(unlikelihood, mean_logprob, stop_below)
    if token_weight is not None:
        terms = terms * token_weight.to(terms.dtype)
    sums = torch.zeros(batch_size, dtype=terms.dtype, device=terms.device).index_add_(0, rows, terms)  # (B,)
    per_sample = sums / counts.clamp(min=1)
    weighted = per_sample * sample_weight.to(per_sample.dtype)  # (B,)
    return LossOutput(loss=weighted.mean(), per_sample=weighted.detach(), response_tokens=counts)


def mean_response_logprob_per_row(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) each row's mean log-prob of its response tokens; logits (B, T, V) and labels (B, T)
    aligned with the inputs (position t predicts token t + 1)."""
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(_wide(logits[:, :-1]), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _still_pushing(unlikelihood: torch.Tensor, mean_logprob: torch.Tensor, stop_below: torch.Tensor) -> torch.Tensor:
    """(B,) 1.0 for every sample except flagged ones already below their floor (0.0: no push).

    A gate, not a hinge on the log-prob: below the floor the sample's gradient is exactly zero, above
    it the usual bounded -log(1 - p) gradient applies.
    """
    done = unlikelihood & (mean_logprob.detach() <= stop_below.to(mean_logprob.dtype))
    return (~done).to(mean_logprob.dtype)


def response_head_loss(
    model: object, batch: dict[str, torch.Tensor], unlikelihood: torch.Tensor | None = None,
    stop_below: torch.Tensor | None = None,
) -> LossOutput:
    """The `response_loss` of `model` on `batch`, running the LM head only on positions that predict a response token.

    On a short-vocabulary model the head and its softmax are a large share of a step; prompt positions
    (often half the tokens) need neither. Works for standard HF causal LMs (decoder + output embeddings);
    `head_only_supported` says when.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1) position t predicts token t + 1
    mask = targets != IGNORE_INDEX  # (B, T-1)
    rows = mask.nonzero()[:, 0]  # (N,)
    logits = base.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
    return selected_response_loss(logits, targets[mask], rows, targets.size(0), batch["sample_weight"], unlikelihood,
                                  stop_below=stop_below)


def head_only_supported(model: object) -> bool:
    """True for causal LMs whose logits are exactly `lm_head(decoder(x))` (no scaling or soft-capping)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "get_decoder") or base.get_output_embeddings() is None:
        return False
    special = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in special)
