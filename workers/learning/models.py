"""Load any Hugging Face causal LM and its tokenizer, offline by default.

A local directory is used as is; anything else is treated as a hub id and resolved from the local
cache only, unless the caller (or HF_HUB_OFFLINE=0 with `allow_download=True`) lets it download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common.errors import PermanentError
from workers.learning.device import DeviceSpec


def _looks_like_path(name_or_path: str) -> bool:
    """Hub ids are `name` or `org/name`; anything absolute, relative-dotted or deeper is a path."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or Path(name_or_path).exists()


def _missing_model_error(name_or_path: str) -> PermanentError:
    """The fix for a model that is not here: a missing folder, or a hub id not in the local cache
    (continuum never downloads a model at run time)."""
    if _looks_like_path(name_or_path):
        return PermanentError(
            f"no model folder at {name_or_path!r}: set CONTINUUM_BASE_MODEL to a Hugging Face model folder "
            "(config.json + *.safetensors) or to a name from `continuum model list`; register one with "
            "`continuum model add PATH|smollm2-135m-instruct`"
        )
    return PermanentError(
        f"model {name_or_path!r} is not in the local Hugging Face cache and continuum does not download "
        f"models at run time: fetch it where the hub is reachable (`hf download {name_or_path} --local-dir "
        "DIR`), then `continuum model add DIR` and set CONTINUUM_BASE_MODEL to its name"
    )


def load_tokenizer(name_or_path: str | Path, allow_download: bool = False):
    """The model's tokenizer; pads on the right for training (generation switches to left itself)."""
    from transformers import AutoTokenizer

    name_or_path = str(name_or_path)
    _check_exists(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=_local_only(allow_download))
    except OSError:
        raise _missing_model_error(name_or_path) from None
    if tokenizer.pad_token_id is None:
        # Many base models ship without a pad token; EOS is the conventional stand-in (masked anyway).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str | Path,
    device_spec: DeviceSpec,
    allow_download: bool = False,
    attn_implementation: str | None = "sdpa",
    **model_kwargs: Any,
):
    """`(model, tokenizer)` for a causal LM at a local path or hub id, on `device_spec`'s device and dtype.

    Offline unless `allow_download` is set and HF_HUB_OFFLINE is not "1". With `device_spec.load_in_4bit`
    the base is quantised to 4-bit NF4 (bitsandbytes) and prepared for k-bit training.
    """
    from transformers import AutoModelForCausalLM

    name_or_path = str(name_or_path)
    tokenizer = load_tokenizer(name_or_path, allow_download=allow_download)
    # use_safetensors: never fall back to unpickling a `pytorch_model.bin` (arbitrary code on load).
    kwargs: dict[str, Any] = {"dtype": device_spec.dtype, "local_files_only": _local_only(allow_download),
                              "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_spec.load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config(device_spec)
        kwargs["device_map"] = {"": device_spec.device.index or 0}
    kwargs.update(model_kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError:
        raise _missing_model_error(name_or_path) from None
    if device_spec.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Gradient checkpointing off: LoRA models this size fit, and it would double compute.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device_spec.device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _four_bit_config(device_spec: DeviceSpec):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=device_spec.dtype,
    )


def _local_only(allow_download: bool) -> bool:
    return not allow_download or os.environ.get("HF_HUB_OFFLINE", "0") == "1"


def _check_exists(name_or_path: str) -> None:
    """A path-looking name that is not a model directory fails here with the fix, not deep in transformers."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PermanentError(
                f"{name_or_path!r} is a folder without config.json, not a Hugging Face model: point "
                "CONTINUUM_BASE_MODEL at the folder that holds config.json and *.safetensors, or register "
                "a model with `continuum model add PATH`"
            )
        return
    if _looks_like_path(name_or_path):
        raise _missing_model_error(name_or_path)
