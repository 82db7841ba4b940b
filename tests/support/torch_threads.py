"""Shared by the learning tests: one torch thread and a narrow tiny-model config."""

from __future__ import annotations

import pytest
import torch

# A narrower tiny model: same architecture and tokenizer, seconds per test instead of tens.
NARROW = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: these models are too small to gain from more, and on a shared 2-core box two
    spinning OpenMP threads fighting other processes made steps 10-30x slower (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
