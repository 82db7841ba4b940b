"""The regulariser protocol `fit` understands (EWC, KL self-distillation, L2 on ΔW, ...).

A regulariser adds a scalar penalty to the task loss of every micro-batch. `fit` logs each one's mean
value and the penalty/task-loss ratio, and checkpoints its state so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Regularizer(Protocol):
    """What `workers.learning.training.fit` calls on each regulariser.

    - ``name``: unique, short (``"ewc"``, ``"kl"``); used as a key in metrics and checkpoints.
    - ``loss(model, batch, outputs)``: a scalar tensor (already multiplied by its strength) that is
      added to the task loss of this micro-batch. ``batch`` follows the batch contract of
      `workers.learning.batching` and ``outputs`` is the model's output for it (``outputs.logits`` is
      ``(B, T, V)``, aligned with ``batch["input_ids"]``).
    - ``state_dict()`` / ``load_state_dict(d)``: tensors only (saved as safetensors in checkpoints);
      return ``{}`` when stateless.

    Optional attribute ``needs_logits`` (default True): a regulariser that never reads ``outputs``
    (EWC, L2 on ΔW) may set it False, which lets `fit` run the LM head only on response positions;
    ``outputs`` is then None (or, for models without that fast path, logits of the last K positions).
    Optional attribute ``uses_task_loss`` (default False): `fit` then also passes the micro-batch's
    task loss as ``loss(model, batch, outputs, task_loss=...)`` (the surprise term differentiates it).
    """

    name: str

    def loss(self, model: Any, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
