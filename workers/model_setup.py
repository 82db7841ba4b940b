"""Loading what an ML job works on: the base model on the chosen device, plus a published adapter.

Every ML job (fisher, train, evaluate) starts here, so device/dtype choice and adapter download happen
the same way everywhere.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.db.models import Adapter
from common.errors import PermanentError
from workers.base_model import base_model_id, resolve_base_model
from workers.context import JobContext
from workers.lineage import adapter_prefix


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: Any  # workers.learning.device.DeviceSpec
    base_model: str  # id recorded on rows


def load_base(ctx: JobContext) -> LoadedModel:
    from workers.learning.device import select_device
    from workers.learning.models import load_model_and_tokenizer

    device = select_device(ctx.settings.device, load_in_4bit=ctx.settings.load_in_4bit)
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(ctx.settings, ctx.store), device)
    return LoadedModel(model, tokenizer, device, base_model_id(ctx.settings))


# Weight formats that unpickle on load: a manifest naming one is refused before anything is downloaded.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")


def check_safetensors_only(manifest: dict[str, Any], where: str) -> None:
    """Refuse an adapter artifact that names a non-safetensors weight file (PEFT would fall back to
    unpickling `adapter_model.bin`), or that has no safetensors weights at all."""
    names = list(manifest.get("files", {}))
    pickled = sorted(n for n in names if n.lower().endswith(PICKLED_WEIGHT_SUFFIXES))
    if pickled:
        raise PermanentError(
            f"adapter at {where} names non-safetensors weight file(s) {pickled}: continuum loads safetensors only; "
            f"republish it with save_pretrained(safe_serialization=True)"
        )
    if not any(n.endswith(".safetensors") for n in names):
        raise PermanentError(f"adapter at {where} has no .safetensors weights: republish it with save_pretrained")


def download_adapter_row(ctx: JobContext, adapter: Adapter, workdir: Path) -> Path:
    """Download a published adapter version into `workdir`; returns the directory PEFT loads.

    The manifest is checked first: only safetensors weights are ever downloaded and loaded.
    """
    from common.objectstore.artifacts import read_manifest
    from workers.learning.lora import download_adapter

    prefix = adapter_prefix(adapter)
    check_safetensors_only(read_manifest(ctx.store, prefix), f"{ctx.store.url}/{prefix}")
    return download_adapter(ctx.store, prefix, workdir / f"adapter-v{adapter.version}")


def scratch_dir(ctx: JobContext) -> tempfile.TemporaryDirectory:
    """A job-private scratch folder under the continuum home (same disk as the caches)."""
    root = (ctx.settings.home / "scratch").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f"{ctx.job_id}-", dir=root)
