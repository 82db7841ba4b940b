"""Length bucketing and collation: batches of similar-length samples, right-padded, no loss on padding.

Bucketing (not packing) keeps every sample in its own row, so no sample can attend to another and
padding is small when lengths are grouped. THE BATCH CONTRACT every consumer codes against::

    input_ids      (B, T) long   right-padded with the tokenizer's pad id
    attention_mask (B, T) long   1 on real tokens, 0 on padding
    labels         (B, T) long   -100 where there is no loss (prompt and padding)
    sample_weight  (B,)   float  per-sample loss weight from the export
    unlikelihood   (B,)   bool   True: push this response's tokens down instead of up
    self_replay    (B,)   bool   True: the base model's own answer (KL to the base applies to it)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from workers.learning.formatting import IGNORE_INDEX, EncodedSample


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int = 0,
    max_tokens: int | None = None,
    window_batches: int = 64,
) -> list[list[int]]:
    """Indices grouped into batches of similar length; order is a pure function of (seed, epoch).

    Samples are shuffled, cut into windows of `window_batches * batch_size`, sorted by length inside
    each window and split into batches of at most `batch_size` samples (and at most `max_tokens`
    padded tokens when given); the batch order is then shuffled. The window keeps batches random
    across epochs while padding stays small.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = np.random.default_rng([seed, epoch])
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    order = rng.permutation(len(lengths_arr))
    window = max(batch_size, window_batches * batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths_arr[chunk], kind="stable")]  # longest first inside the window
        batch: list[int] = []
        batch_max = 0
        for idx in chunk.tolist():
            longest = max(batch_max, int(lengths_arr[idx]))
            over_budget = max_tokens is not None and bool(batch) and longest * (len(batch) + 1) > max_tokens
            full = len(batch) >= batch_size or over_budget
            if full:
                batches.append(batch)
                batch, longest = [], int(lengths_arr[idx])
            batch.append(idx)
            batch_max = longest
        if batch:
            batches.append(batch)
    permutation = rng.permutation(len(batches))
    return [batches[i] for i in permutation]


def collate(samples: Sequence[EncodedSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `samples` to the longest one; see the module docstring for the contract."""
    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)  # (B, T)
    for row, sample in enumerate(samples):
        n = len(sample)
        input_ids[row, :n] = torch.tensor(sample.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(sample.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "sample_weight": torch.tensor([s.weight for s in samples], dtype=torch.float32),  # (B,)
        "unlikelihood": torch.tensor([s.unlikelihood for s in samples], dtype=torch.bool),  # (B,)
        "self_replay": torch.tensor([s.self_replay for s in samples], dtype=torch.bool),  # (B,)
    }


def batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on `device` (non-blocking where the copy can overlap compute)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
