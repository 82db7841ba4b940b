"""Model loading and device choice: clear one-line errors naming the fix."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError, PermanentError
from workers.learning.device import select_device
from workers.learning.models import load_model_and_tokenizer


def test_missing_model_path_names_the_fix(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(PermanentError) as info:
        load_model_and_tokenizer(str(missing), select_device("cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert "CONTINUUM_BASE_MODEL" in message and "continuum model add" in message
    assert "init-tiny" not in message and "--model" not in message  # no fix that does something else

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PermanentError, match="without config.json.*continuum model add"):
        load_model_and_tokenizer(str(empty), select_device("cpu"))


def test_uncached_hub_id_offline_names_the_fix():
    """A hub id: the fix is to fetch it where the hub is reachable and register the folder, never to
    write a random tiny model under that name."""
    with pytest.raises(PermanentError) as info:
        load_model_and_tokenizer("nobody-continuum/not-a-real-model", select_device("cpu"))
    message = str(info.value)
    assert "hf download nobody-continuum/not-a-real-model" in message and "continuum model add" in message
    assert "init-tiny" not in message and "\n" not in message


def test_loads_tiny_model_on_cpu_in_fp32(narrow_dir):
    model, tokenizer = load_model_and_tokenizer(narrow_dir, select_device("cpu"))
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.padding_side == "right" and tokenizer.chat_template


def test_device_choice():
    cpu = select_device("cpu")
    assert (cpu.kind, cpu.dtype) == ("cpu", torch.float32)
    assert select_device("auto").kind in {"cuda", "mps", "cpu"}
    with pytest.raises(ConfigError, match="4-bit QLoRA needs CUDA"):
        select_device("cpu", load_in_4bit=True)
    with pytest.raises(ConfigError, match="unknown device"):
        select_device("tpu")
