"""LoRA targets, rank and alpha come from settings; `auto` picks every attention and MLP projection of
the architecture, else every linear layer but the LM head."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig

from common.errors import ConfigError
from common.settings import load_settings
from workers.learning import lora
from workers.learning.lora import LoraSettings, attach_adapter, default_target_modules
from workers.learning.tiny import build_tiny_model, tiny_config


def _skeleton(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_auto_targets_per_architecture():
    assert default_target_modules(_skeleton(tiny_config())) == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    gpt2 = _skeleton(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert default_target_modules(gpt2) == ("c_attn", "c_proj", "c_fc")
    neox = _skeleton(GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=64))
    assert default_target_modules(neox) == ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


def test_unknown_architecture_falls_back_to_every_linear_layer_but_the_head(monkeypatch):
    monkeypatch.setattr(lora, "ARCHITECTURE_TARGETS", {})
    targets = default_target_modules(_skeleton(tiny_config()))
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert "lm_head" not in targets


def test_settings_choose_targets_rank_and_alpha_and_job_overrides_win(monkeypatch):
    monkeypatch.setenv("CONTINUUM_LORA_TARGET_MODULES", "q_proj, v_proj")
    monkeypatch.setenv("CONTINUUM_LORA_RANK", "4")
    monkeypatch.setenv("CONTINUUM_LORA_ALPHA", "12")
    settings = load_settings()
    chosen = LoraSettings.from_settings(settings)
    assert (chosen.r, chosen.alpha, chosen.target_modules) == (4, 12, ("q_proj", "v_proj"))
    model = attach_adapter(build_tiny_model(0), chosen)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 12, {"q_proj", "v_proj"})
    assert not any("gate_proj.lora" in n for n, _ in model.named_parameters())

    overridden = LoraSettings.from_settings(settings, {"r": 2, "target_modules": ["o_proj"]})
    assert (overridden.r, overridden.alpha, overridden.target_modules) == (2, 12, ("o_proj",))
    with pytest.raises(ConfigError, match="unknown LoRA override"):
        LoraSettings.from_settings(settings, {"rank": 2})


def test_auto_is_the_default_and_resolves_against_the_model():
    settings = LoraSettings.from_settings(load_settings())
    assert settings.is_auto and (settings.r, settings.alpha) == (16, 32)
    model = attach_adapter(build_tiny_model(0), settings)
    assert set(model.peft_config["default"].target_modules) == set(lora.LLAMA_STYLE)
    with pytest.raises(ConfigError, match="auto"):
        LoraSettings(target_modules=("auto", "q_proj"))
