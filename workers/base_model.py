"""Where an ML job's base model comes from: the built-in tiny model, a registered model, or a path.

`CONTINUUM_BASE_MODEL` is one of
- empty or `builtin:tiny`: the built-in tiny model, made once (seeded) and published to the object
  store; every worker downloads that one copy, so all workers train and evaluate against identical
  weights even if tiny-model construction ever changed between versions;
- a name registered with `continuum model add` (`workers.model_registry`): downloaded once per worker
  from the object store, the same way;
- a local model folder, or a hub id (`org/name`) the loader resolves from the local hub cache.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common.objectstore import ObjectStore
from common.objectstore.artifacts import download_artifact, is_complete, publish_artifact
from common.errors import PermanentError
from common.settings import Settings

BUILTIN_TINY = "builtin:tiny"
TINY_PREFIX = "models/builtin-tiny"
_COMPLETE_MARK = ".continuum-complete"


def base_model_id(settings: Settings) -> str:
    """The identifier recorded on adapters and Fisher rows (registered name, path/id, or `builtin:tiny`)."""
    return settings.base_model or BUILTIN_TINY


def model_cache_root(settings: Settings) -> Path:
    """Where workers keep downloaded base models."""
    return (settings.home / "cache" / "models").resolve()


def publish_tiny_model(store: ObjectStore, seed: int = 0, size: str = "tiny") -> str:
    """Build the tiny model and publish it under TINY_PREFIX (idempotent: a complete copy is kept)."""
    if is_complete(store, TINY_PREFIX):
        return TINY_PREFIX
    from workers.learning.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="continuum-tiny-") as tmp:
        path = write_tiny_model(Path(tmp) / "model", seed=seed, size=size)
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
        publish_artifact(store, TINY_PREFIX, files, {"kind": "base-model", "model_id": BUILTIN_TINY, "seed": seed})
    return TINY_PREFIX


def resolve_base_model(settings: Settings, store: ObjectStore) -> str:
    """A local directory or hub id that `load_model_and_tokenizer` can open."""
    name = settings.base_model
    if name and name != BUILTIN_TINY:
        from workers import model_registry

        if model_registry.is_registered(store, name):
            return str(model_registry.download_model(store, name, model_cache_root(settings)))
        _check_local_model(name)
        return name
    cache = model_cache_root(settings) / "builtin-tiny"
    if (cache / _COMPLETE_MARK).exists():
        return str(cache)
    publish_tiny_model(store)
    # Download beside the cache and rename, so a crashed download is never mistaken for a model.
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache.parent))
    try:
        download_artifact(store, TINY_PREFIX, staging)
        (staging / _COMPLETE_MARK).write_text("ok")
        if not (cache / _COMPLETE_MARK).exists():
            shutil.rmtree(cache, ignore_errors=True)
            staging.rename(cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(cache)


def _check_local_model(name_or_path: str) -> None:
    """A path-like CONTINUUM_BASE_MODEL must be a model directory, a bare name must be registered, and a
    hub id (`org/name`) must be in the local Hugging Face cache: fail here, naming the fix, not in a
    worker deep inside transformers."""
    path = Path(name_or_path).expanduser()
    path_like = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or path.exists()
    if path_like and not (path / "config.json").is_file():
        raise PermanentError(
            f"CONTINUUM_BASE_MODEL={name_or_path!r} is not a model directory (no config.json there): point it at a "
            "Hugging Face model directory, or unset it to use the built-in tiny model"
        )
    if not path_like and "/" not in name_or_path:
        raise PermanentError(
            f"CONTINUUM_BASE_MODEL={name_or_path!r} is not a registered model: register it with `continuum model "
            f"add SOURCE --name {name_or_path}` (see `continuum model list`), or give a model folder path"
        )
    if not path_like and not _in_hub_cache(name_or_path):
        raise PermanentError(
            f"CONTINUUM_BASE_MODEL={name_or_path!r} is a hub id that is not in the local Hugging Face cache, and "
            f"continuum never downloads models at run time: fetch it where the hub is reachable (`hf download "
            f"{name_or_path} --local-dir DIR`), then `continuum model add DIR --name NAME` and set "
            "CONTINUUM_BASE_MODEL=NAME"
        )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether `repo_id`'s config.json is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id at all
        return False
    return isinstance(found, str)
