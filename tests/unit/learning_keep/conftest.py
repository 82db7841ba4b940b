"""A small LoRA model on the built-in tiny architecture (narrowed so each test takes seconds)."""

from __future__ import annotations

import pytest
import torch

from workers.learning.lora import LoraSettings, attach_adapter
from workers.learning.synthetic import make_fact_sets
from workers.learning.tiny import build_tiny_model, build_tokenizer

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2}


@pytest.fixture(scope="package", autouse=True)
def single_thread():
    """One torch thread: these models are too small to gain from more, and on a shared 2-core box two
    OpenMP threads fighting other processes made steps ~30x slower (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(0)


@pytest.fixture(scope="session")
def fact_sets():
    return make_fact_sets(2, 24, seed=3)


def make_lora_model(seed: int = 0, targets=("q_proj", "v_proj"), trained: bool = True):
    """A small model with a LoRA adapter; `trained` gives lora_B non-zero values as after a cycle."""
    torch.manual_seed(seed)
    model = attach_adapter(build_tiny_model(seed, **SMALL),
                           LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=tuple(targets)))
    if trained:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.05)
    return model


@pytest.fixture
def lora_model():
    return make_lora_model()
