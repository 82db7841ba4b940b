"""Safetensors only (issue 9): a base model folder with only pickled weights is not loaded, and an
adapter manifest naming a pickled weight file is refused before anything is downloaded."""

from __future__ import annotations

import shutil

import pytest
import torch

from common.errors import ContinuumError, PermanentError
from workers.learning.device import select_device
from workers.learning.models import load_model_and_tokenizer
from workers.learning.tiny import build_tiny_model
from workers.model_setup import check_safetensors_only

from tests.support.torch_threads import NARROW


def test_a_base_model_with_only_pickled_weights_is_refused(tmp_path, narrow_dir):
    pickled = tmp_path / "pickled"
    shutil.copytree(narrow_dir, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    torch.save(build_tiny_model(0, **NARROW).state_dict(), pickled / "pytorch_model.bin")
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    with pytest.raises((ContinuumError, OSError, ValueError)):
        load_model_and_tokenizer(pickled, select_device("cpu"))
    model, _ = load_model_and_tokenizer(narrow_dir, select_device("cpu"))  # the safetensors folder loads
    assert model is not None


@pytest.mark.parametrize("files", [
    {"adapter_model.bin": {}, "adapter_config.json": {}},
    {"adapter_model.safetensors": {}, "extra/optimizer.pt": {}, "adapter_config.json": {}},
    {"adapter_config.json": {}},
])
def test_an_adapter_manifest_naming_pickled_or_no_safetensors_weights_is_refused(files):
    with pytest.raises(PermanentError, match="safetensors"):
        check_safetensors_only({"files": files}, "file:///x/adapters/default/v1")


def test_a_safetensors_adapter_manifest_passes():
    check_safetensors_only({"files": {"adapter_model.safetensors": {}, "adapter_config.json": {},
                                      "continuum_metadata.json": {}}}, "x")
