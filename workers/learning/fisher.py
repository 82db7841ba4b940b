"""Diagonal empirical Fisher of a LoRA model: the mean over samples of each sample's squared gradient.

Why per sample: the Fisher diagonal is E[g_i²], not (E[g])². Squaring a batch gradient cancels the
gradients that disagree across samples and reorders which parameters look important, so it is never
offered here. Three ways to get the per-sample gradients, all giving the same numbers:

- ``"activations"``: one batched forward+backward; hooks on every trainable ``nn.Linear`` (the LoRA
  ``lora_A``/``lora_B`` layers) keep the layer input ``x`` and output gradient ``g`` and form each
  sample's weight gradient ``Σ_t g_t x_tᵀ`` exactly (samples never mix in a causal LM forward). About the
  cost of the batch-gradient pass, and it works on 4-bit bases too (the LoRA layers stay plain Linear).
- ``"vmap"``: ``torch.func.vmap(grad(functional_call))`` in micro-batches; covers any trainable tensor.
- ``"loop"``: one forward+backward per sample; slow, traces nothing, always works.

``mode="fast"`` picks ``activations`` when every trainable parameter is a Linear weight/bias, else
``vmap``, and falls back to ``loop`` automatically if the fast path raises.

The same hooks give the Fisher of the *base* weights that LoRA wraps (``space="delta_w"``): the gradient
of a wrapped layer's effective weight ``W + ΔW`` is ``Σ_t g_t x_tᵀ`` of the wrapper, non-zero even on a
fresh adapter whose ``lora_B`` is 0 (where the ``lora_A`` Fisher is exactly 0). `ewc.py` uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from common.errors import ValidationError

log = logging.getLogger(__name__)

FisherMode = Literal["fast", "activations", "vmap", "loop"]
FisherSpace = Literal["lora", "delta_w"]
SummedLoss = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


def summed_response_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Σ over samples of each sample's training loss (`losses.response_loss`, which averages them).

    Exactly the loss training uses, per sample: mean over its response tokens, times its weight, and
    the unlikelihood term on flagged rows. The flag tensor is always passed (no data-dependent branch,
    which vmap could not trace); for unflagged rows it selects plain cross-entropy anyway.
    """
    from workers.learning.losses import response_loss

    unlikely = batch.get("unlikelihood")
    out = response_loss(logits, batch["labels"], batch["sample_weight"], unlikely.bool() if unlikely is not None else None)
    return out.loss * batch["labels"].shape[0]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the Fisher is taken over (the LoRA weights on a PEFT model), by full name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def lora_wrapped_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT LoRA layers (modules with ``lora_A``/``lora_B`` and a ``base_layer``), by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and isinstance(module.lora_A, nn.ModuleDict)
    }


def _model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------
# Per-sample gradients from layer activations and output gradients
# ----------------------------------------------------------------------------------------------------


class _ActivationCapture:
    """Forward/backward hooks that turn (input, output-grad) of Linear layers into per-sample grads."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.inputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.grads: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self._handles: list[Any] = []

    def __enter__(self) -> _ActivationCapture:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            self.inputs[name].append(args[0].detach())
            if output.requires_grad:
                output.register_hook(lambda grad: self.grads[name].append(grad.detach()))

        return hook

    def per_sample_weight_grads(self, name: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, out, in) weight grads and (B, out) bias grads, summed over every call of the layer."""
        xs, gs = self.inputs[name], self.grads[name]
        if not gs:
            return None
        # Backward visits calls in reverse order; pair each forward input with its own gradient.
        gs = list(reversed(gs))
        weight = bias = None
        for x, g in zip(xs, gs, strict=True):
            x3 = x.float().reshape(batch_size, -1, x.shape[-1])
            g3 = g.float().reshape(batch_size, -1, g.shape[-1])
            w = torch.einsum("bto,bti->boi", g3, x3)
            b = g3.sum(1)
            weight = w if weight is None else weight + w
            bias = b if bias is None else bias + b
        return weight, bias

    def clear(self) -> None:
        for name in self.layers:
            self.inputs[name].clear()
            self.grads[name].clear()


def _linear_owners(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, tuple[str, str]] | None:
    """Map each trainable parameter to (linear module name, "weight"|"bias"), or None if one is not."""
    owners: dict[str, tuple[str, str]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            for attr in ("weight", "bias"):
                p = getattr(module, attr, None)
                if p is not None and p.requires_grad:
                    owners[f"{module_name}.{attr}" if module_name else attr] = (module_name, attr)
    return owners if set(owners) == set(params) else None


def _accumulate_activations(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: SummedLoss,
    space: FisherSpace,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], int]:
    params = trainable_parameters(model)
    if space == "lora":
        owners = _linear_owners(model, params)
        if owners is None:
            raise _FastPathUnavailable("a trainable parameter is not a Linear weight/bias")
        modules = dict(model.named_modules())
        layers = {mod: modules[mod] for mod, _ in owners.values()}
    else:
        layers = lora_wrapped_layers(model)
        if not layers:
            raise ValidationError("Fisher space 'delta_w' needs a PEFT LoRA model; got a model with no LoRA layers")
    sums: dict[str, torch.Tensor] = {}
    count = 0
    with _ActivationCapture(layers) as capture:
        for batch in batches:
            batch = _to_device(batch, device)
            bsz = batch["input_ids"].shape[0]
            capture.clear()
            outputs = model(**_model_inputs(batch))
            total = loss_fn(outputs.logits, batch)
            # Samples never interact in the forward pass, so d(Σ loss_i)/d(activation of i) = d loss_i/d(...).
            torch.autograd.grad(total, list(params.values()), allow_unused=True)
            for layer_name in layers:
                got = capture.per_sample_weight_grads(layer_name, bsz)
                if got is None:
                    continue
                weight, bias = got
                if space == "lora":
                    _add(sums, f"{layer_name}.weight", weight.pow(2).sum(0))
                    if getattr(layers[layer_name], "bias", None) is not None and f"{layer_name}.bias" in params:
                        _add(sums, f"{layer_name}.bias", bias.pow(2).sum(0))
                else:
                    _add(sums, layer_name, weight.pow(2).sum(0))
            count += bsz
    if space == "lora":
        for name, p in params.items():  # parameters no sample reached still get an explicit zero
            sums.setdefault(name, torch.zeros_like(p, dtype=torch.float32))
    return sums, count


# ----------------------------------------------------------------------------------------------------
# Per-sample gradients with torch.func, and the per-sample loop
# ----------------------------------------------------------------------------------------------------


class _FastPathUnavailable(RuntimeError):
    """The chosen fast path cannot handle this model; the caller falls back."""


def _accumulate_vmap(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: SummedLoss,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], int]:
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in trainable_parameters(model).items()}

    def one_sample_loss(trainable: dict[str, torch.Tensor], sample: dict[str, torch.Tensor]) -> torch.Tensor:
        single = {k: v.unsqueeze(0) for k, v in sample.items()}
        # No attention mask: transformers' mask builder branches on data, which vmap cannot trace. The
        # batch was left-aligned first, so under the causal mask real tokens never see the padding.
        kwargs = {"input_ids": single["input_ids"]}
        outputs = functional_call(model, trainable, args=(), kwargs=kwargs, strict=False)
        return loss_fn(outputs.logits, single)

    per_sample_grad = vmap(grad(one_sample_loss), in_dims=(None, 0))
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    # The fused SDPA kernels have no vmap batching rule (torch falls back to a slow per-sample loop and
    # warns); the math kernel is plain matmuls, which vmap batches.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        for batch in batches:
            count += _vmap_batch(per_sample_grad, params, batch, device, sums)
    return sums, count


def _vmap_batch(per_sample_grad: Any, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                device: torch.device, sums: dict[str, torch.Tensor]) -> int:
    """Add one micro-batch's squared per-sample gradients to `sums`; returns its sample count."""
    batch = _left_align(_to_device(batch, device))
    sample_keys = ("input_ids", "attention_mask", "labels", "sample_weight", "unlikelihood")
    grads = per_sample_grad(params, {k: batch[k] for k in sample_keys if k in batch})
    for name, g in grads.items():
        sums[name] += g.float().pow(2).sum(0)
    return batch["input_ids"].shape[0]


def _accumulate_loop(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: SummedLoss,
    space: FisherSpace,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], int]:
    if space == "delta_w":
        # One sample per batch through the exact activation formula: with B=1 it is the plain gradient.
        def singles() -> Iterable[dict[str, torch.Tensor]]:
            for batch in batches:
                yield from _split_samples(batch)

        return _accumulate_activations(model, singles(), loss_fn, space, device)
    params = trainable_parameters(model)
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    names, tensors = list(params), list(params.values())
    count = 0
    for batch in batches:
        for sample in _split_samples(_to_device(batch, device)):
            outputs = model(**_model_inputs(sample))
            loss = loss_fn(outputs.logits, sample)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    sums[name] += g.float().pow(2)
            count += 1
    return sums, count


def _left_align(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move every sample's real tokens to the front (padding to the end), keeping their order."""
    mask = batch["attention_mask"].bool()
    if bool((mask.cummin(dim=1).values == mask).all()):  # already right-padded
        return batch
    # A stable sort of (not real) puts real positions first in their original order.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    aligned = dict(batch)
    for key in ("input_ids", "attention_mask", "labels"):
        aligned[key] = batch[key].gather(1, order)
    aligned["labels"] = aligned["labels"].masked_fill(~aligned["attention_mask"].bool(), -100)
    return aligned


def _split_samples(batch: Mapping[str, torch.Tensor]) -> Iterable[dict[str, torch.Tensor]]:
    """Each sample alone, trimmed to its real tokens (padding dropped, so no padding path is involved)."""
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        sample = {}
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                continue
            row = value[i]
            sample[key] = (row[keep] if row.dim() >= 1 and row.shape[0] == keep.shape[0] else row).unsqueeze(0)
        yield sample


def _limited(batches: Iterable[Mapping[str, torch.Tensor]], limit: int | None) -> Iterable[dict[str, torch.Tensor]]:
    """Batches until `limit` samples have been seen (the last one cut), so cost is bounded."""
    seen = 0
    for batch in batches:
        if limit is not None and seen >= limit:
            return
        size = batch["input_ids"].shape[0]
        if limit is not None and seen + size > limit:
            take = limit - seen
            batch = {k: v[:take] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            size = take
        seen += size
        yield dict(batch)


def _add(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    if key in sums:
        sums[key] += value
    else:
        sums[key] = value.clone()


@contextmanager
def _eval_mode(model: nn.Module):
    """Dropout off while measuring (the Fisher is of the deterministic model), restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def compute_fisher(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    mode: FisherMode = "fast",
    space: FisherSpace = "lora",
    loss_fn: SummedLoss = summed_response_loss,
    max_samples: int | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: ``mean_i (∂ loss_i/∂θ)²`` over the samples in `batches`.

    `batches` follow the batch contract (one sample per row). ``space="lora"`` covers the trainable
    parameters (keys = ``model.named_parameters()`` names); ``space="delta_w"`` covers the effective
    weight of every LoRA-wrapped layer (keys = the wrapper module names). Returns float32 CPU tensors.
    """
    if mode not in ("fast", "activations", "vmap", "loop"):
        raise ValidationError(f"unknown Fisher mode {mode!r}; choose fast, activations, vmap or loop")
    device = next(model.parameters()).device
    # Cut to `max_samples` first, then hold them: a fallback must be able to re-read the same samples.
    materialised = list(_limited(batches, max_samples))
    with _eval_mode(model), torch.enable_grad():
        sums, count, used = _run_with_fallback(model, materialised, mode, space, loss_fn, device)
    if count == 0:
        raise ValidationError("Fisher needs at least one sample; the batches were empty")
    log.info("fisher: %d samples, mode=%s, space=%s", count, used, space)
    return {name: (total / count).cpu() for name, total in sums.items()}


def _run_with_fallback(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], mode: FisherMode, space: FisherSpace,
    loss_fn: SummedLoss, device: torch.device,
) -> tuple[dict[str, torch.Tensor], int, str]:
    """(sums, sample count, the path that ran): the chosen fast path, or the loop when it fails."""
    chosen = mode
    if mode == "fast":
        chosen = "activations" if space == "delta_w" or _linear_owners(model, trainable_parameters(model)) else "vmap"
    if chosen == "loop":
        return (*_accumulate_loop(model, batches, loss_fn, space, device), "loop")
    try:
        if chosen == "activations":
            return (*_accumulate_activations(model, batches, loss_fn, space, device), "activations")
        if space == "delta_w":
            raise ValidationError("Fisher space 'delta_w' is computed from activations; use mode fast or loop")
        return (*_accumulate_vmap(model, batches, loss_fn, device), "vmap")
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the loop that traces nothing
        if mode != "fast":
            raise
        log.warning("fisher fast path %s failed (%s: %s); using the per-sample loop", chosen, type(exc).__name__, exc)
        return (*_accumulate_loop(model, batches, loss_fn, space, device), "loop")


def combine_online(old: Mapping[str, torch.Tensor] | None, new: Mapping[str, torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """Online EWC accumulation ``F ← γ·F_old + F_new`` (keys only in one side keep their own value)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValidationError(f"online EWC gamma must be in [0, 1], got {gamma}")
    if not old:
        return {k: v.clone() for k, v in new.items()}
    combined = {k: gamma * v for k, v in old.items()}
    for key, value in new.items():
        combined[key] = combined[key] + value if key in combined else value.clone()
    return combined


def batches_for_rows(rows: list[dict[str, Any]], tokenizer: Any, batch_size: int = 8, max_length: int = 256) -> list[dict[str, torch.Tensor]]:
    """Rows → contract batches in a fixed order (length-sorted, so padding is small and runs repeat)."""
    from workers.learning.batching import collate
    from workers.learning.formatting import encode_rows

    samples = encode_rows(rows, tokenizer, max_length)
    order = sorted(range(len(samples)), key=lambda i: (len(samples[i]), i))
    pad = tokenizer.pad_token_id
    return [collate([samples[i] for i in order[s : s + batch_size]], pad) for s in range(0, len(order), batch_size)]
