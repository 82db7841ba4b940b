"""Shared fixtures: the built-in tiny model written once per session, and a narrowed variant for speed."""

from __future__ import annotations

import pytest
import torch

from workers.learning.lora import LoraSettings, attach_adapter
from workers.learning.tiny import build_tiny_model, build_tokenizer, write_tiny_model

from tests.support.torch_threads import NARROW, one_torch_thread  # noqa: F401 (autouse fixture)


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
