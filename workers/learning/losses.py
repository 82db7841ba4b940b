"""The task loss: cross-entropy on response tokens only, weighted per sample.

Each sample's loss is the mean over its own response tokens (so a long answer does not outweigh a
short one), times its export weight; the batch loss is the mean over samples. Samples flagged
`unlikelihood` (thumbs-down under that policy) use -log(1 - p(token)) instead, which pushes those
tokens down without the unbounded gradient of negated cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.learning.formatting import IGNORE_INDEX

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
) -> LossOutput:
    """Weighted response-only loss of a causal LM batch.

    logits (B, K, V) may cover only the last K positions of the (B, T) labels (a model run with
    `logits_to_keep=K`); position t predicts token t + 1. token_weight (B, T), when given, multiplies
    each token's term (importance weighting).
    """
    batch, width = labels.shape
    keep = logits.size(1)
    if keep > width:
        raise ValueError(f"logits cover {keep} positions but labels only {width}")
    targets = labels[:, width - keep + 1 :]  # (B, K-1) the tokens each kept position predicts
    pred = logits[:, :-1, :]  # (B, K-1, V)
    mask = targets != IGNORE_INDEX  # (B, K-1)
    nll = F.cross_entropy(
        pred.reshape(-1, pred.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(batch, -1)  # (B, K-1) −log p(token); 0 where masked

    terms = nll
    if unlikelihood is not None:  # callers pass None when no sample is flagged (saves a device sync)
        p = torch.exp(-nll)  # (B, K-1)
        unlikely = -torch.log(torch.clamp(1.0 - p, min=_MIN_ONE_MINUS_P))  # (B, K-1)
        terms = torch.where(unlikelihood[:, None], unlikely, nll)
    maskf = mask.to(terms.dtype)
    if token_weight is not None:
        maskf = maskf * token_weight[:, width - keep + 1 :].to(terms.dtype)
    counts = mask.sum(dim=1)  # (B,)
    per_sample = (terms * maskf).sum(dim=1) / counts.clamp(min=1)  # (B,)
    weighted = per_sample * sample_weight.to(per_sample.dtype)  # (B,)
    return LossOutput(loss=weighted.mean(), per_sample=weighted.detach(), response_tokens=counts)
