"""KL self-distillation: keep the student's next-token distribution near a teacher on response tokens.

The teacher is the same model with the adapter switched off (``teacher="base"``: `disable_adapter`,
no second copy of the weights) or the parent adapter loaded under a second adapter name
(``teacher=<adapter name>``: peft's per-sample ``adapter_names`` forward, which leaves the trained
adapter active and its ``requires_grad`` flags untouched). The penalty is ``KL(p_teacher ‖ p_student)``
averaged over response positions only (labels != -100), so prompts and padding add nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from common.errors import ValidationError


def response_token_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean ``KL(p_t ‖ p_s)`` over the positions that predict a response token (labels aligned to inputs)."""
    mask = labels[:, 1:] != -100
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    t = teacher_logits[:, :-1][mask].float() / temperature
    s = student_logits[:, :-1][mask].float() / temperature
    log_t = F.log_softmax(t, dim=-1)
    log_s = F.log_softmax(s, dim=-1)
    per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    return per_token.mean() * temperature**2


def teacher_logits(model: Any, batch: dict[str, torch.Tensor], teacher: str = "base") -> torch.Tensor:
    """Logits of the teacher for `batch`, without gradients."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    # The teacher is deterministic (no dropout), and peft only takes `adapter_names` in eval mode.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if teacher == "base":
                with model.disable_adapter():
                    return model(**inputs).logits
            names = [teacher] * batch["input_ids"].shape[0]
            return model(**inputs, adapter_names=names).logits
    finally:
        model.train(was_training)


class KLDistillation:
    """``strength · KL(p_teacher ‖ p_student)`` on response tokens, as a `Regularizer` for `fit`.

    ``rows="all"`` applies it to every row of the batch; ``rows="self_replay"`` only to the base
    model's own answers to general prompts (the batch's ``self_replay`` flag), so it holds the full
    next-token distribution of the base on prompts beyond the new ones without pulling the new rows
    back towards the base (which would fight learning them). The teacher then runs on those rows only.
    """

    def __init__(self, strength: float, teacher: str = "base", temperature: float = 1.0,
                 rows: str = "all", name: str = "kl"):
        if strength < 0:
            raise ValidationError(f"KL strength must be >= 0, got {strength}")
        if temperature <= 0:
            raise ValidationError(f"KL temperature must be > 0, got {temperature}")
        if rows not in ("all", "self_replay"):
            raise ValidationError(f"KL rows must be 'all' or 'self_replay', got {rows!r}")
        self.strength = float(strength)
        self.teacher = teacher
        self.temperature = float(temperature)
        self.rows = rows
        self.name = name
        self.last_kl: torch.Tensor | float = 0.0

    def loss(self, model: Any, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        logits = outputs.logits
        if self.rows == "self_replay":
            chosen = batch.get("self_replay")
            if chosen is None or not bool(chosen.any()):
                return logits.sum() * 0.0
            batch = {k: batch[k][chosen] for k in ("input_ids", "attention_mask", "labels")}
            logits = logits[chosen]
        target = teacher_logits(model, batch, self.teacher)
        kl = response_token_kl(target, logits, batch["labels"], self.temperature)
        self.last_kl = kl.detach()  # a tensor: no device sync per step
        return self.strength * kl

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


def load_parent_as_teacher(model: Any, adapter_dir: str, name: str = "parent") -> str:
    """Load the parent adapter beside the trained one (frozen) so `KLDistillation(teacher=name)` can use it."""
    model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
    for param_name, param in model.named_parameters():
        if f".{name}." in param_name:
            param.requires_grad_(False)
    return name


def unload_teacher(model: Any, name: str = "parent") -> None:
    """Drop the teacher adapter again, so `save_pretrained` publishes only the trained one."""
    if name in getattr(model, "peft_config", {}):
        model.delete_adapter(name)
