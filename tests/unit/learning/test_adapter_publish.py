"""Published adapters are stock PEFT: `PeftModel.from_pretrained` reproduces the trained model's logits."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from common.objectstore.artifacts import read_manifest
from common.objectstore.local import LocalObjectStore
from workers.learning.batching import collate
from workers.learning.device import select_device
from workers.learning.formatting import encode_rows
from workers.learning.lora import (
    METADATA_FILE,
    LoraSettings,
    attach_adapter,
    download_adapter,
    publish_adapter,
    read_metadata,
    trainable_parameters,
)
from workers.learning.models import load_model_and_tokenizer
from workers.learning.synthetic import make_facts
from workers.learning.training import TrainConfig, fit


def test_published_adapter_loads_with_stock_peft_and_reproduces_logits(narrow_dir, tmp_path):
    model, tokenizer = load_model_and_tokenizer(narrow_dir, select_device("cpu"))
    model = attach_adapter(model, LoraSettings(r=8, alpha=16, dropout=0.05))
    rows = make_facts(12, seed=6)
    fit(model, tokenizer, rows, TrainConfig(learning_rate=5e-3, epochs=2, batch_size=4))
    assert any(p.abs().sum() > 0 for n, p in trainable_parameters(model).items() if "lora_B" in n)  # it trained

    store = LocalObjectStore(tmp_path / "store")
    metadata = {"parent_version": None, "dataset_ids": ["d1"], "fisher_id": None, "metrics": {"loss": 1.0}}
    manifest = publish_adapter(store, "adapters/v0001", model, metadata)
    assert {"adapter_model.safetensors", "adapter_config.json", METADATA_FILE} <= set(manifest["files"])
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in manifest["files"])
    assert read_manifest(store, "adapters/v0001")["metadata"] == metadata

    local = download_adapter(store, "adapters/v0001", tmp_path / "dl")
    assert read_metadata(local) == metadata
    fresh_base = AutoModelForCausalLM.from_pretrained(narrow_dir)
    stock = PeftModel.from_pretrained(fresh_base, str(local)).eval()
    batch = collate(encode_rows(rows, tokenizer, 128), tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert json.loads((local / "adapter_config.json").read_text())["r"] == 8

    # Continuing the parent: same starting weights, and trainable.
    base_again, _ = load_model_and_tokenizer(narrow_dir, select_device("cpu"))
    child = attach_adapter(base_again, parent_dir=local)
    child_params, parent_params = trainable_parameters(child), trainable_parameters(model)
    assert child_params.keys() == parent_params.keys() and child_params
    for name, value in parent_params.items():
        torch.testing.assert_close(child_params[name], value)
