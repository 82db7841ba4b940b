"""The base-model registry: models added with `continuum model add`, kept in the object store.

A registered model is a safetensors folder published under ``models/<name>/`` (manifest last, with
the model's description in it), so every worker of a distributed install trains on the same weights.
A worker downloads it once into ``<home>/cache/models/<name>`` (staged beside it and renamed, like the
built-in tiny model); a re-added (`--replace`) model has a new manifest, and the stale copy is
replaced on the next use. No torch here: listing and resolving stay cheap.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from common.errors import ObjectNotFound, PermanentError
from common.objectstore.artifacts import download_artifact, is_complete, publish_artifact, read_manifest
from common.objectstore.base import ObjectStore

PARENT = "models"
BUILTIN_TINY_DIR = "builtin-tiny"  # the built-in tiny model's prefix under PARENT: not a user name
CACHE_MARK = ".continuum-complete"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Files a model folder may carry into the registry. Weights are safetensors only; tokenizers are
# JSON/text or sentencepiece (protobuf). Pickle formats (.bin/.pt/.pth/.ckpt) are never copied or read.
ALLOWED_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".tiktoken")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def validate_name(name: str) -> str:
    """A registry name: lower-case letters, digits, `.`, `_`, `-` (it becomes an object key and a folder)."""
    if not _NAME.match(name or "") or name == BUILTIN_TINY_DIR or ".." in name:
        raise PermanentError(
            f"model name {name!r} is not allowed: use lower-case letters, digits, '.', '_' or '-' "
            f"(at most 64, not {BUILTIN_TINY_DIR!r}), e.g. --name smollm2-135m-instruct"
        )
    return name


def model_prefix(name: str) -> str:
    return f"{PARENT}/{validate_name(name)}"


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors weights; a folder with only pickle weights is refused with the fix."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PermanentError(f"{folder} is not a Hugging Face model folder (no config.json)")
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        return weights
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise PermanentError(
            f"{folder} has only pickle weights ({', '.join(pickled)}), which continuum never loads: convert them "
            "to safetensors in a trusted environment (model.save_pretrained(folder, safe_serialization=True)) "
            "and add that folder"
        )
    raise PermanentError(f"{folder} has no *.safetensors weights: add a folder that has them, or a .gguf file")


def model_files(folder: Path) -> dict[str, Path]:
    """Name → path of every file to publish: weights, config and tokenizer (nothing pickled)."""
    weight_files(folder)
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.suffix in ALLOWED_SUFFIXES and not p.name.startswith(".")
    }


def safetensors_summary(weights: list[Path]) -> dict[str, Any]:
    """Parameter count and dtype read from the safetensors headers (no tensor is loaded)."""
    total = 0
    dtypes: dict[str, int] = {}
    for path in weights:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
            dtypes[meta["dtype"]] = dtypes.get(meta["dtype"], 0) + count
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    return {"parameters": total, "dtype": names.get(dtype, dtype.lower())}


def publish_model(store: ObjectStore, name: str, folder: Path, description: dict[str, Any],
                  replace: bool = False) -> dict[str, Any]:
    """Publish `folder` as model `name` (manifest last); returns the manifest.

    Complete artifacts are immutable (`publish_artifact` returns an existing manifest untouched), so
    `replace` — an operator's explicit `model add --replace` — deletes the old model first. Until the new
    manifest lands the name is unregistered: a job starting in that window fails with "unknown model"
    and is retried, rather than loading a mix of old and new files.
    """
    if replace:
        store.delete_prefix(f"{model_prefix(name)}/")
    return publish_artifact(store, model_prefix(name), model_files(Path(folder)),
                            {"kind": "base-model", "model": {**description, "name": name}})


def read_model(store: ObjectStore, name: str) -> dict[str, Any] | None:
    """The registered model's description (None if no complete model has that name)."""
    try:
        manifest = read_manifest(store, model_prefix(name))
    except ObjectNotFound:
        return None
    return {**manifest.get("model", {}), "name": name, "created_at": manifest.get("created_at")}


def list_models(store: ObjectStore) -> list[dict[str, Any]]:
    """Descriptions of every registered model, by name (the built-in tiny model is not listed here)."""
    models = []
    for key in store.list(f"{PARENT}/"):
        rest = key[len(PARENT) + 1 :]
        if rest.count("/") == 1 and rest.endswith("/manifest.json"):
            name = rest.split("/", 1)[0]
            if name != BUILTIN_TINY_DIR and _NAME.match(name):
                found = read_model(store, name)
                if found is not None:
                    models.append(found)
    return sorted(models, key=lambda m: m["name"])


def is_registered(store: ObjectStore, name: str) -> bool:
    return bool(_NAME.match(name)) and name != BUILTIN_TINY_DIR and is_complete(store, model_prefix(name))


def download_model(store: ObjectStore, name: str, cache_root: Path) -> Path:
    """The local folder of registered model `name`, downloaded once into `cache_root/<name>`.

    The cache mark holds the manifest's `created_at`, so a model re-added with `--replace` is fetched
    again; a crashed download is a staging folder, never mistaken for the model.
    """
    manifest = read_manifest(store, model_prefix(name))
    stamp = str(manifest.get("created_at"))
    cache = (Path(cache_root) / name).resolve()
    mark = cache / CACHE_MARK
    if mark.exists() and mark.read_text() == stamp:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache.parent))
    try:
        download_artifact(store, model_prefix(name), staging)
        (staging / CACHE_MARK).write_text(stamp)
        if not (mark.exists() and mark.read_text() == stamp):
            shutil.rmtree(cache, ignore_errors=True)
            try:
                staging.rename(cache)
            except OSError:  # another process on this host renamed its copy first: use that one
                if not (mark.exists() and mark.read_text() == stamp):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache
