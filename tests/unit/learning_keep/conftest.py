"""A small LoRA model on the built-in tiny architecture (narrowed so each test takes seconds)."""

from __future__ import annotations

import pytest
import torch

from workers.learning.lora import LoraSettings, attach_adapter
from workers.learning.synthetic import make_fact_sets
from workers.learning.tiny import build_tiny_model, build_tokenizer

from tests.support.torch_threads import NARROW as SMALL
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)


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
