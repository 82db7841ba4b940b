"""The persistent LoRA adapter: create or continue, save in stock PEFT format, publish to the object store.

One adapter lives across cycles: each cycle loads its parent (trainable) and keeps training it, so
what earlier cycles taught stays in the same weights that regularisers anchor. Saved with PEFT's
`save_pretrained` (safetensors), so stock `peft.PeftModel.from_pretrained` loads every version.

Which layers get LoRA (`target_modules="auto"`) is chosen per architecture: every linear projection
of attention *and* MLP. Attention-only LoRA (the original paper's choice) learns new facts poorly;
QLoRA and later studies found adapting all linear layers matches full fine-tuning, and the MLP
blocks are where a transformer stores facts — what continuum's cycles teach.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.errors import ConfigError, PermanentError
from common.objectstore.artifacts import download_artifact, publish_artifact
from common.objectstore.base import ObjectStore

METADATA_FILE = "continuum_metadata.json"
AUTO = "auto"
LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = LLAMA_STYLE  # kept for callers that name the Llama-style list explicitly

# model_type (config.json) → LoRA targets: all attention and MLP projections of that architecture.
ARCHITECTURE_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: LLAMA_STYLE for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
        "olmo", "olmo2", "granite", "smollm3", "cohere", "starcoder2_llama", "deepseek_v2", "internlm2",
    )},
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_bigcode": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "falcon": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
}


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of the model's linear layers (nn.Linear, GPT-2's Conv1D), the LM head excluded."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if is_linear and module is not head and not name.endswith("lm_head"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def default_target_modules(model: Any) -> tuple[str, ...]:
    """The architecture's LoRA targets (see ARCHITECTURE_TARGETS), else every linear layer but the head.

    Only names present in this model are kept, so a variant missing one projection still works.
    """
    present = set(linear_module_names(model))
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = [t for t in ARCHITECTURE_TARGETS.get(model_type, ()) if t in present]
    if known:
        return tuple(known)
    if not present:
        raise ConfigError("this model has no linear layers to put LoRA on; set CONTINUUM_LORA_TARGET_MODULES")
    return tuple(sorted(present))


def parse_target_modules(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`"auto"` or a comma list (`"q_proj, v_proj"`) → a tuple of names."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    names = tuple(v for v in value if v)
    return names or (AUTO,)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; validated on construction.

    `target_modules=("auto",)` is resolved against the model by `resolved_for` (`attach_adapter`
    does it): the architecture's projections, see the module docstring for why.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=(AUTO,))

    def __post_init__(self) -> None:
        problems = []
        if self.r < 1:
            problems.append(f"LoRA r must be >= 1 (got {self.r})")
        if self.alpha <= 0:
            problems.append(f"LoRA alpha must be > 0 (got {self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"LoRA dropout must be in [0, 1) (got {self.dropout})")
        targets = self.target_modules
        if isinstance(targets, str):
            targets = parse_target_modules(targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            problems.append("LoRA target_modules must be a non-empty list of module names (or 'auto')")
        elif AUTO in targets and len(targets) > 1:
            problems.append("LoRA target_modules: 'auto' cannot be combined with module names")
        if problems:
            raise ConfigError("; ".join(problems))
        object.__setattr__(self, "target_modules", tuple(targets))

    @classmethod
    def from_settings(cls, settings: Any, overrides: dict[str, Any] | None = None) -> "LoraSettings":
        """CONTINUUM_LORA_* settings, then a job's `lora` overrides (same field names as this class)."""
        values: dict[str, Any] = {
            "r": settings.lora_rank,
            "alpha": settings.lora_alpha,
            "dropout": settings.lora_dropout,
            "target_modules": parse_target_modules(settings.lora_target_modules),
        }
        unknown = sorted(set(overrides or {}) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown LoRA override(s) {unknown}; use r, alpha, dropout, target_modules")
        values.update(overrides or {})
        return cls(**values)

    @property
    def is_auto(self) -> bool:
        return self.target_modules == (AUTO,)

    def resolved_for(self, model: Any) -> "LoraSettings":
        """These settings with `auto` replaced by the model's default targets."""
        return replace(self, target_modules=default_target_modules(model)) if self.is_auto else self

    def to_peft_config(self):
        from peft import LoraConfig

        if self.is_auto:
            raise ConfigError("LoRA target_modules is 'auto': resolve it against the model first (resolved_for)")
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
    settings = (settings or LoraSettings()).resolved_for(model)
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
