"""Shared fixtures: the built-in tiny model written once per session, and a narrowed variant for speed."""

from __future__ import annotations

import pytest
import torch

from workers.learning.lora import LoraSettings, attach_adapter
from workers.learning.tiny import build_tiny_model, build_tokenizer, write_tiny_model

# A narrower tiny model: same architecture and tokenizer, seconds per test instead of tens.
NARROW = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2}


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def narrow_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("narrow") / "model", seed=0, **NARROW)


def narrow_lora_model(seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    model = build_tiny_model(seed, **NARROW)
    return attach_adapter(model, LoraSettings(r=8, alpha=16, dropout=dropout))
