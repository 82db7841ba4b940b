"""Checkpoints: complete-only discovery, pruning, pickle-free round trip of optimizer and RNG state."""

from __future__ import annotations

import random

import numpy as np
import torch

from common.objectstore.local import LocalObjectStore
from workers.learning.checkpoints import (
    TrainingState,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _state(step: int) -> TrainingState:
    param = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(0.8, 0.95))
    param.grad = torch.randn(4, 3)
    optimizer.step()
    return TrainingState(
        adapter={"layer.lora_A": param.detach()},
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": step, "base_lrs": [1e-3]},
        rng=capture_rng(),
        progress={"global_step": step, "epoch": 0, "step_in_epoch": step},
        regularizers={"ewc": {"fisher/a": torch.ones(2)}, "kl": {}},
    )


def test_round_trip_and_only_complete_checkpoints_are_found(tmp_path):
    store = LocalObjectStore(tmp_path)
    assert latest_checkpoint(store, "run/ckpt") is None
    state = _state(3)
    saved = save_checkpoint(store, "run/ckpt", state)
    assert saved == "run/ckpt/step-00000003"
    # A crashed later upload (files but no manifest) is ignored.
    store.put_bytes("run/ckpt/step-00000009/adapter.safetensors", b"partial")
    assert latest_checkpoint(store, "run/ckpt") == saved
    assert not any(k.endswith((".pt", ".pkl", ".bin")) for k in store.list("run/ckpt"))

    loaded = load_checkpoint(store, saved)
    assert torch.equal(loaded.adapter["layer.lora_A"], state.adapter["layer.lora_A"])
    assert loaded.optimizer["param_groups"][0]["betas"] == (0.8, 0.95)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(loaded.optimizer["state"][0][key], state.optimizer["state"][0][key])
    assert torch.equal(loaded.regularizers["ewc"]["fisher/a"], torch.ones(2)) and loaded.regularizers["kl"] == {}
    assert loaded.progress == state.progress and loaded.scheduler == state.scheduler
    # The optimiser accepts it back.
    param = torch.nn.Parameter(torch.zeros(4, 3))
    torch.optim.AdamW([param]).load_state_dict(loaded.optimizer)


def test_rng_state_restores_every_generator(tmp_path):
    store = LocalObjectStore(tmp_path)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    saved = save_checkpoint(store, "c", _state(1))
    expected = (torch.rand(2), random.random(), np.random.rand())
    restore_rng(load_checkpoint(store, saved).rng)
    got = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_older_checkpoints_are_pruned(tmp_path):
    store = LocalObjectStore(tmp_path)
    for step in (1, 2, 3, 4):
        save_checkpoint(store, "c", _state(step), keep_last=2)
    assert latest_checkpoint(store, "c") == "c/step-00000004"
    assert sorted({k.split("/")[1] for k in store.list("c/")}) == ["step-00000003", "step-00000004"]
