"""The persistent LoRA adapter: create or continue, save in stock PEFT format, publish to the object store.

One adapter lives across cycles: each cycle loads its parent (trainable) and keeps training it, so
what earlier cycles taught stays in the same weights that regularisers anchor. Saved with PEFT's
`save_pretrained` (safetensors), so stock `peft.PeftModel.from_pretrained` loads every version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError, PermanentError
from common.objectstore.artifacts import download_artifact, publish_artifact
from common.objectstore.base import ObjectStore

METADATA_FILE = "continuum_metadata.json"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; validated on construction."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)

    def __post_init__(self) -> None:
        problems = []
        if self.r < 1:
            problems.append(f"LoRA r must be >= 1 (got {self.r})")
        if self.alpha <= 0:
            problems.append(f"LoRA alpha must be > 0 (got {self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"LoRA dropout must be in [0, 1) (got {self.dropout})")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            problems.append("LoRA target_modules must be a non-empty list of module names")
        if problems:
            raise ConfigError("; ".join(problems))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


def attach_adapter(model: Any, settings: LoraSettings | None = None, parent_dir: str | Path | None = None):
    """Wrap `model` with a trainable LoRA adapter: new from `settings`, or the parent from `parent_dir`.

    A parent adapter keeps its own saved LoRA config (its rank and targets); `settings` then only
    applies to a fresh adapter.
    """
    from peft import PeftModel, get_peft_model

    if parent_dir is not None:
        parent_dir = Path(parent_dir)
        if not (parent_dir / "adapter_config.json").exists():
            raise PermanentError(
                f"no PEFT adapter in {parent_dir} (adapter_config.json missing): publish or download it first"
            )
        return PeftModel.from_pretrained(model, str(parent_dir), is_trainable=True)
    settings = settings or LoraSettings()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in settings.target_modules if t not in present]
    if missing:
        raise ConfigError(f"LoRA target modules {missing} are not in this model; pick from its linear layers")
    return get_peft_model(model, settings.to_peft_config())


def trainable_parameters(model: Any) -> dict[str, Any]:
    """Name → parameter for every parameter the optimiser updates (the LoRA weights)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_adapter_dir(model: Any, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """`save_pretrained` (safetensors) plus `continuum_metadata.json` (parent, datasets, fisher, config, metrics)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    (directory / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=2, sort_keys=True, default=str))
    return directory


def publish_adapter(store: ObjectStore, prefix: str, model: Any, metadata: dict[str, Any] | None = None,
                    workdir: str | Path | None = None) -> dict[str, Any]:
    """Save the adapter and publish its files under `prefix` (manifest last); returns the manifest."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        directory = save_adapter_dir(model, Path(tmp) / "adapter", metadata)
        files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
        return publish_artifact(store, prefix, files, {"kind": "adapter", "metadata": metadata or {}})


def download_adapter(store: ObjectStore, prefix: str, dest: str | Path) -> Path:
    """Download a published adapter into `dest`; returns the directory PEFT loads from."""
    return download_artifact(store, prefix, Path(dest))


def read_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def settings_dict(settings: LoraSettings) -> dict[str, Any]:
    """JSON-ready form of the settings (for metadata)."""
    data = asdict(settings)
    data["target_modules"] = list(settings.target_modules)
    return data
