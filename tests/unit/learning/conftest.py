"""Shared fixtures: the built-in tiny model written once per session, and a narrowed variant for speed."""

from __future__ import annotations

import pytest
import torch

from workers.learning.lora import LoraSettings, attach_adapter
from workers.learning.tiny import build_tiny_model, build_tokenizer, write_tiny_model

# A narrower tiny model: same architecture and tokenizer, seconds per test instead of tens.
NARROW = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 spinning OpenMP threads run up to 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def narrow_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("narrow") / "model", seed=0, **NARROW)


def narrow_lora_model(seed: int = 0, dropout: float = 0.0, adapter_seed: int | None = None):
    """The narrow base for `seed` with a fresh LoRA adapter initialised from `adapter_seed` (default: seed)."""
    torch.manual_seed(seed if adapter_seed is None else adapter_seed)
    model = build_tiny_model(seed, **NARROW)
    return attach_adapter(model, LoraSettings(r=8, alpha=16, dropout=dropout))
