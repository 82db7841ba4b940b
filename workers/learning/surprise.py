"""The surprise auxiliary objective: a second-order term that keeps chosen layers unsurprised.

The surprise signal of layer ℓ on a batch is the gradient of the task loss with respect to that layer's
output activation, s_ℓ = ∇_{y_ℓ} L (per token: L is the summed response loss, so a token's signal does
not shrink with the batch). The auxiliary loss is

    L_surprise = λ · mean over chosen layers ℓ and attended positions t of ‖ c_t · s_ℓ,t ‖²,
    c_t = sg( min(1, κ / ‖s_ℓ,t‖) )   (the clip factor κ, detached)

added to the task loss every N-th micro-batch. Its gradient with respect to the adapter, 2 λ Σ (∂s/∂θ)ᵀ s,
is a Hessian–vector product: the term exists only through second-order gradients, which is why s is
computed with `create_graph=True`. The clip factor is detached (`sg`), so it rescales without adding its
own derivative, and nothing differentiates the result again, so no third-order term appears.

Why this form: it trains the adapter so that each chosen layer *predicts away* its own surprise — it
moves the layer to outputs where the task loss is flat, and a flat layer output is one that new data
moves less ("double backpropagation", Drucker & LeCun 1992; the same pull towards flat minima as
gradient-norm penalties and SAM). The earlier system's form ‖y_ℓ − ∇_{y_ℓ}L‖² compares an activation
with a gradient (different units); its minimum pulls the activations towards the tiny gradient vector,
i.e. towards zero, erasing the representation it should protect. That form is not used.

Which layers: by default the last decoder layer only. Its signal already reaches every adapter (the
second-order gradient flows back through the whole network), while each earlier layer adds a double
backward through the layers above it: bench/regularizers.py (2026-12-02, 2 cores) measured the step
at 1.37× plain on SmolLM2-135M with the last layer and 1.50× with the last two (tiny model: 1.09× and
1.55×, its 4 layers making the second one half the network).

It needs a model that can backpropagate twice: attention runs in its plain formulation while the term
is on (the fused kernels have no second derivative). A 4-bit (bitsandbytes) base cannot at all: the recipe leaves
the term off there and says so (`continual.prepare_cycle`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from common.errors import ConfigError
from workers.learning.losses import IGNORE_INDEX, response_loss


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks of a (PEFT-wrapped) causal LM, in order."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks"):
            return list(module)
    raise ConfigError("surprise objective: cannot find the model's decoder layers (no `layers`/`h` list)")


def supports_double_backward(model: Any) -> bool:
    """False for a 4-bit quantised base (its matmuls have no second derivative)."""
    return not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False))


def _switch_attention(model: Any, implementation: str) -> str | None:
    """Set the model's attention implementation; returns the previous one (None if it cannot be set).

    PyTorch's fused attention kernels (flash, memory-efficient, and the CPU flash kernel) have no second
    derivative, so while the surprise term trains, attention runs the plain ("eager") formulation, which
    costs more time per step (bench/regularizers.py measures it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if previous is None or previous == implementation or not hasattr(base, "set_attn_implementation"):
        return None
    base.set_attn_implementation(implementation)
    return previous


class SurpriseLoss:
    """`λ · L_surprise` (module docstring) as a `fit` regulariser; hooks the chosen layers' outputs.

    `fit` hands it the micro-batch's task loss (`uses_task_loss`), so it neither needs the full logits
    (the LM head still runs on response positions only) nor computes the loss a second time."""

    needs_logits = False
    uses_task_loss = True

    def __init__(self, model: Any, strength: float, layers: Sequence[int] = (-1,), every: int = 1,
                 clip: float = 1.0, name: str = "surprise"):
        problems = []
        if strength < 0:
            problems.append(f"strength must be >= 0 (got {strength})")
        if every < 1:
            problems.append(f"every must be >= 1 (got {every})")
        if not clip > 0:
            problems.append(f"clip must be > 0 (got {clip})")
        blocks = decoder_layers(model)
        chosen = sorted({i % len(blocks) for i in layers if -len(blocks) <= i < len(blocks)})
        if len(chosen) != len(set(layers)) or not layers:
            problems.append(f"layers must be distinct indices of the model's {len(blocks)} layers (got {list(layers)})")
        if problems:
            raise ConfigError("invalid surprise objective: " + "; ".join(problems))
        self.name = name
        self.strength, self.every, self.clip = float(strength), int(every), float(clip)
        self.layers = chosen
        self.calls = 0
        self._outputs: dict[int, torch.Tensor] = {}
        self._hooks = [blocks[i].register_forward_hook(self._capture(i)) for i in chosen]
        self._model = model
        self._attention = _switch_attention(model, "eager")

    def _capture(self, index: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            # Only the student's forward with gradients (a teacher's no-grad forward must not replace it).
            if torch.is_tensor(hidden) and hidden.requires_grad:
                self._outputs[index] = hidden
        return hook

    def loss(self, model: Any, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor | None = None) -> torch.Tensor:
        """The term for this micro-batch. `task_loss` is the batch's task loss as `fit` computed it
        (a mean over samples of per-sample token means); without it, the response loss of
        `outputs.logits` is used."""
        self.calls += 1
        captured = [self._outputs.pop(i, None) for i in self.layers]
        if task_loss is None:
            task_loss = response_loss(outputs.logits, batch["labels"], batch["sample_weight"]).loss
        zero = task_loss * 0.0
        if self.strength == 0 or (self.calls - 1) % self.every or any(y is None for y in captured):
            return zero
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
        # × tokens: the summed loss, so a token's signal does not shrink as the batch grows.
        signals = torch.autograd.grad(task_loss * tokens, captured, create_graph=True)
        attended = batch["attention_mask"].to(signals[0].dtype)  # (B, T)
        total = zero
        for signal in signals:
            norms = signal.detach().norm(dim=-1).clamp(min=1e-12)  # (B, T)
            scale = torch.clamp(self.clip / norms, max=1.0)  # the clip factor, detached
            per_position = (signal * scale.unsqueeze(-1)).pow(2).sum(-1)  # (B, T)
            total = total + (per_position * attended).sum() / attended.sum().clamp(min=1)
        return self.strength * total / len(signals)

    def close(self) -> None:
        """Remove the hooks (fit calls this when it ends)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._outputs.clear()
        if self._attention is not None:
            _switch_attention(self._model, self._attention)
            self._attention = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"calls": torch.tensor(self.calls, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "calls" in state:
            self.calls = int(state["calls"])
