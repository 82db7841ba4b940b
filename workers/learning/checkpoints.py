"""Training checkpoints in the object store: everything needed to continue as if never stopped.

A checkpoint is an artifact ``<prefix>/step-00000042/`` holding safetensors (adapter weights, optimizer
tensors, RNG states, regulariser tensors) and ``state.json`` (optimizer hyper-parameters, LR schedule,
Python/NumPy RNG, data position, metrics so far). No pickle anywhere. The manifest is written last,
so `latest_checkpoint` only ever returns complete checkpoints.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from common.objectstore.artifacts import MANIFEST, download_artifact, list_complete_artifacts, publish_artifact
from common.objectstore.base import ObjectStore
from common.objectstore.keys import join

_TENSOR_FILES = ("adapter", "optimizer", "rng", "regularizers", "step")


@dataclass
class TrainingState:
    """A snapshot of a run between two optimiser steps."""

    adapter: dict[str, torch.Tensor]  # trainable parameter name → value
    optimizer: dict[str, Any]  # torch optimizer.state_dict()
    scheduler: dict[str, Any]  # torch LR scheduler state_dict() (JSON-ready)
    rng: dict[str, Any]  # see capture_rng()
    progress: dict[str, Any]  # epoch, step_in_epoch, global_step, seed, tokens_seen, loss_curve, ...
    regularizers: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # The optimiser step's own state beyond the optimizer (workers.learning.steps: the tiered step's
    # accumulators and counters); empty for the plain step.
    step_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    step_state: dict[str, Any] = field(default_factory=dict)

    @property
    def global_step(self) -> int:
        return int(self.progress["global_step"])


# --- RNG ------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every RNG training draws from: torch (CPU and CUDA: dropout), Python `random`, NumPy."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- (de)serialisation without pickle ---------------------------------------------------------------


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, slots in state_dict["state"].items():
        plain_state[str(index)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                plain_state[str(index)][key] = value
    return tensors, {"state": plain_state, "param_groups": state_dict["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(slots) for i, slots in plain["state"].items()}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    groups = []
    for group in plain["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])  # JSON turned the tuple into a list
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    # safetensors refuses shared or non-contiguous storage: give it independent contiguous copies.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))


def checkpoint_prefix(prefix: str, step: int) -> str:
    return join(prefix, f"step-{step:08d}")


def save_checkpoint(store: ObjectStore, prefix: str, state: TrainingState, keep_last: int = 2) -> str:
    """Publish `state` under `<prefix>/step-XXXXXXXX` (manifest last); prune older complete ones."""
    target = checkpoint_prefix(prefix, state.global_step)
    optimizer_tensors, optimizer_plain = _split_optimizer(state.optimizer)
    rng_tensors = {"torch": state.rng["torch"]}
    rng_tensors.update({f"cuda/{i}": t for i, t in enumerate(state.rng.get("cuda", []))})
    reg_tensors = {f"{name}/{key}": t for name, d in state.regularizers.items() for key, t in d.items()}
    plain = {
        "optimizer": optimizer_plain,
        "scheduler": state.scheduler,
        "rng": {"python": state.rng["python"], "numpy": state.rng["numpy"]},
        "progress": state.progress,
        "regularizer_names": sorted(state.regularizers),
        "step": state.step_state,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = {"adapter": state.adapter, "optimizer": optimizer_tensors, "rng": rng_tensors,
                 "regularizers": reg_tensors, "step": state.step_tensors}
        files = {}
        for name in _TENSOR_FILES:
            _save_tensors(parts[name], root / f"{name}.safetensors")
            files[f"{name}.safetensors"] = root / f"{name}.safetensors"
        (root / "state.json").write_text(json.dumps(plain, default=_json_default))
        files["state.json"] = root / "state.json"
        publish_artifact(store, target, files, {"kind": "checkpoint", "global_step": state.global_step})
    _prune(store, prefix, keep_last)
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON state")


def _prune(store: ObjectStore, prefix: str, keep_last: int) -> None:
    complete = list_complete_artifacts(store, prefix)
    for old in complete[: max(0, len(complete) - keep_last)]:
        store.delete(join(old, MANIFEST))  # incomplete first, so no reader picks it mid-delete
        store.delete_prefix(old + "/")


def latest_checkpoint(store: ObjectStore, prefix: str) -> str | None:
    """The newest complete checkpoint under `prefix`, or None."""
    complete = list_complete_artifacts(store, prefix)
    return complete[-1] if complete else None


def load_checkpoint(store: ObjectStore, checkpoint: str) -> TrainingState:
    """Read a checkpoint written by `save_checkpoint` (hash-verified)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = download_artifact(store, checkpoint, Path(tmp))
        # A checkpoint from before the pluggable step has no step.safetensors: the plain step needs none.
        tensors = {name: load_file(str(root / f"{name}.safetensors")) for name in _TENSOR_FILES
                   if name != "step" or (root / "step.safetensors").exists()}
        tensors.setdefault("step", {})
        plain = json.loads((root / "state.json").read_text())
    rng = dict(plain["rng"])
    rng["torch"] = tensors["rng"]["torch"]
    cuda = sorted((k for k in tensors["rng"] if k.startswith("cuda/")), key=lambda k: int(k.split("/")[1]))
    if cuda:
        rng["cuda"] = [tensors["rng"][k] for k in cuda]
    regularizers: dict[str, dict[str, torch.Tensor]] = {name: {} for name in plain["regularizer_names"]}
    for key, value in tensors["regularizers"].items():
        name, sub = key.split("/", 1)
        regularizers.setdefault(name, {})[sub] = value
    return TrainingState(
        adapter=tensors["adapter"],
        optimizer=_join_optimizer(tensors["optimizer"], plain["optimizer"]),
        scheduler=plain["scheduler"],
        rng=rng,
        progress=plain["progress"],
        regularizers=regularizers,
        step_tensors=tensors["step"],
        step_state=plain.get("step", {}),
    )
