"""Device and dtype, chosen in one place.

CUDA trains in bf16 (optionally a 4-bit QLoRA base via bitsandbytes), Apple MPS in fp16/fp32 (no
bitsandbytes there), CPU in fp32. Everything else asks a `DeviceSpec` instead of probing torch itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from common.errors import ConfigError

DeviceKind = Literal["cuda", "mps", "cpu"]
_PREFERENCES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class DeviceSpec:
    """Where and in which precision a model lives."""

    kind: DeviceKind
    device: torch.device
    dtype: torch.dtype
    load_in_4bit: bool = False

    def describe(self) -> str:
        quant = ", 4-bit base" if self.load_in_4bit else ""
        return f"{self.device} ({str(self.dtype).removeprefix('torch.')}{quant})"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(preference: str = "auto", load_in_4bit: bool = False, dtype: str | None = None) -> DeviceSpec:
    """Pick the device for `preference` ("auto", "cuda", "mps", "cpu") and its training dtype.

    `dtype` overrides the default precision ("float32", "bfloat16", "float16"); 4-bit needs CUDA.
    """
    if preference not in _PREFERENCES:
        raise ConfigError(f"unknown device {preference!r}; choose one of {', '.join(_PREFERENCES)}")
    kind: DeviceKind
    if preference == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    else:
        kind = preference  # type: ignore[assignment]
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch sees no CUDA GPU; use --device auto or cpu")
        if kind == "mps" and not _mps_available():
            raise ConfigError("device 'mps' requested but torch has no MPS backend here; use --device auto or cpu")

    if load_in_4bit and kind != "cuda":
        raise ConfigError(
            f"4-bit QLoRA needs CUDA (bitsandbytes); device is {kind}: drop --4bit or run on a CUDA worker"
        )
    if load_in_4bit:
        _require_bitsandbytes()

    default = {"cuda": torch.bfloat16, "mps": torch.float16, "cpu": torch.float32}[kind]
    chosen = _parse_dtype(dtype) if dtype else default
    if kind == "mps" and chosen is torch.bfloat16:
        raise ConfigError("MPS trains in float16 or float32, not bfloat16; pass dtype float16 or float32")
    return DeviceSpec(kind=kind, device=torch.device(kind), dtype=chosen, load_in_4bit=load_in_4bit)


def _parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"unknown dtype {name!r}; choose float32, bfloat16 or float16")
    return table[name]


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("4-bit QLoRA needs bitsandbytes: pip install 'continuum[cuda]'") from None


def peak_memory_mib(spec: DeviceSpec) -> dict[str, float]:
    """This process's peak memory so far, in MiB: resident memory (`rss`), and on CUDA the most the
    allocator held on the GPU (`cuda`). For sizing a machine for a model (README: memory and precision)."""
    import resource
    import sys

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"rss": round(max_rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if spec.kind == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak

