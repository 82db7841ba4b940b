"""The online learner: a few optimizer steps on each chat turn, shaped by what the turn was.

For every turn (`learn_turn`):

* **kind** — `fact` (the detector found a fact), `question` or `chat`; each has a learning-rate
  multiplier (`CONTINUUM_ONLINE_LR_*`). A fact seen before uses the repeated-fact multiplier times a
  repetition boost, 1 + boost · (times seen − 1), capped at 2. A multiplier of 0 learns nothing: by
  default chat and questions are not learnt (the model's own answer teaches it nothing new).
* **rows** — a fact becomes answers to questions about it (`rows.fact_rows`); another turn is its
  conversation and answer.
* **token importance** — the loss weighs each answer token (the existing loss's `token_weight`):
  tokens of the fact's entities `entity_token_weight`, the answer's first and last tokens
  `edge_token_weight`, others 1. Entity tokens are found by token id (the ids the entity's words
  tokenise to, function words left out), which needs no alignment with the chat template.
* **KL to the base** on the answer tokens, KL(p_base ‖ p_adapter), with a coefficient that depends on
  the turn: `kl` for chat and questions, `kl_fact · (1 − importance)` for a fact (an important fact
  may move the model further from its base).
* **base protection** on every step: KL(p_base ‖ p_adapter) on the base model's own answers to
  general prompts (`self_replay.self_replay_rows`, `protect_rows` of them per step, in turn), weighted
  `protect_kl` — the same protection the default batch recipe uses. KL on the turn's own answer only
  holds back what should change; this holds still what should not. Without it, SmolLM2 kept 0.10–0.30
  of its right general answers after 30 turns (bench/online_facts.py).
* **replay** every `replay_every` turns: the most important facts of the memory, at the replay
  multiplier, so facts learnt earlier are rehearsed while new ones arrive.

The optimizer (AdamW over the LoRA parameters) persists across turns; its state is part of the
learner's state (`state_dict`), saved between online jobs. The learner never touches the base weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from workers.learning.batching import collate
from workers.learning.formatting import encode_rows
from workers.learning.kl import response_token_kl
from workers.learning.losses import IGNORE_INDEX, response_loss

_FUNCTION_WORDS = frozenset({"the", "a", "an", "of", "in", "at", "to", "my", "your", "is", "and", "on", "for"})


@dataclass(frozen=True)
class OnlineConfig:
    learning_rate: float = 1e-3
    steps_per_turn: int = 3
    lr_chat: float = 0.0
    lr_question: float = 0.0
    lr_fact: float = 1.0
    lr_repeated_fact: float = 1.0
    repetition_boost: float = 0.25
    lr_replay: float = 0.5
    replay_every: int = 5
    replay_facts: int = 4
    kl: float = 1.0
    kl_fact: float = 0.2
    entity_token_weight: float = 2.0
    edge_token_weight: float = 1.5
    # KL to the base on its own answers to general prompts, every step. SmolLM2 (bench/online_facts.py):
    # 1 kept 0.79 of the right general answers, 3 kept 0.87 at the same recall (0.60), 10 kept 0.82
    # and recalled 0.50.
    protect_kl: float = 3.0
    protect_rows: int = 4  # of those answers per step (rotating through them)
    max_length: int = 256
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0

    @staticmethod
    def from_settings(settings: Any, learning_rate: float) -> OnlineConfig:
        return OnlineConfig(
            learning_rate=settings.online_learning_rate or learning_rate,
            steps_per_turn=settings.online_steps_per_turn, lr_chat=settings.online_lr_chat,
            lr_question=settings.online_lr_question, lr_fact=settings.online_lr_fact,
            lr_repeated_fact=settings.online_lr_repeated_fact, repetition_boost=settings.online_repetition_boost,
            lr_replay=settings.online_lr_replay, replay_every=settings.online_replay_every,
            replay_facts=settings.online_replay_facts, kl=settings.online_kl, kl_fact=settings.online_kl_fact,
            entity_token_weight=settings.online_entity_token_weight,
            edge_token_weight=settings.online_edge_token_weight, protect_kl=settings.online_protect_kl,
            protect_rows=settings.online_protect_rows,
        )

    def multiplier(self, kind: str, times_seen: int = 1) -> float:
        """The learning-rate multiplier of a turn of `kind` (a fact seen `times_seen` times so far)."""
        if kind == "fact":
            if times_seen <= 1:
                return self.lr_fact
            return self.lr_repeated_fact * min(2.0, 1.0 + self.repetition_boost * (times_seen - 1))
        return {"chat": self.lr_chat, "question": self.lr_question, "replay": self.lr_replay}[kind]

    def kl_coefficient(self, kind: str, importance: float = 0.0) -> float:
        if kind in ("fact", "replay"):
            return self.kl_fact * (1.0 - min(max(importance, 0.0), 1.0))
        return self.kl


@dataclass
class StepReport:
    kind: str
    learning_rate: float
    kl_coefficient: float
    losses: list[float] = field(default_factory=list)  # task loss before each step
    kl: list[float] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else [round(x, 6) for x in v] if isinstance(v, list) else v)
                for k, v in asdict(self).items()}


class OnlineLearner:
    """Optimizer steps on a LoRA-wrapped `model`, one turn at a time."""

    def __init__(self, model: Any, tokenizer: Any, config: OnlineConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the online learner needs a model with trainable (LoRA) parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.protected: list[dict[str, Any]] = []  # the base's own answers (see `protect`)
        self._next_protected = 0

    def protect(self, rows: Sequence[dict[str, Any]]) -> None:
        """Hold the model near its base on these rows (the base's own answers to general prompts)."""
        self.protected = [{**r, "entities": []} for r in rows if r.get("response")]

    def _protected_batch(self) -> list[dict[str, Any]]:
        if not self.protected or self.config.protect_kl <= 0:
            return []
        count = min(self.config.protect_rows, len(self.protected))
        start = self._next_protected
        self._next_protected = (start + count) % len(self.protected)
        return [self.protected[(start + i) % len(self.protected)] for i in range(count)]

    # ------------------------------------------------------------------ loss pieces

    def token_weights(self, batch: dict[str, torch.Tensor], entities: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, T) weights of the label positions: entity tokens, first and last answer tokens, else 1."""
        labels = batch["labels"]
        weights = torch.ones(labels.shape, dtype=torch.float32)
        for row, names in enumerate(entities):
            ids = self._entity_ids(names)
            positions = (labels[row] != IGNORE_INDEX).nonzero().flatten()
            if len(positions) == 0:
                continue
            for position in positions.tolist():
                if int(labels[row, position]) in ids:
                    weights[row, position] = self.config.entity_token_weight
            for edge in (positions[0], positions[-1]):
                weights[row, edge] = max(float(weights[row, edge]), self.config.edge_token_weight)
        return weights

    def _entity_ids(self, names: Sequence[str]) -> set[int]:
        ids: set[int] = set()
        for name in names:
            for word in name.split():
                if word.lower().strip(".,!?") in _FUNCTION_WORDS:
                    continue
                for text in (word, " " + word):
                    ids.update(self.tokenizer.encode(text, add_special_tokens=False))
        return ids

    def _batch(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        samples = encode_rows(list(rows), self.tokenizer, self.config.max_length)
        batch = collate(samples, self.pad_id)
        weights = self.token_weights(batch, [r.get("entities", []) for r in rows])
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in batch.items()}, weights.to(device)

    def losses(self, rows: Sequence[dict[str, Any]], kl_coefficient: float) -> tuple[torch.Tensor, float, float]:
        """(total loss, task loss, KL) of `rows` with the token weights and the KL term."""
        batch, weights = self._batch(rows)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = self.model(**inputs).logits  # (B, T, V)
        task = response_loss(logits, batch["labels"], batch["sample_weight"], token_weight=weights).loss
        total = task
        kl_value = 0.0
        if kl_coefficient > 0:
            with torch.no_grad(), self.model.disable_adapter():
                base = self.model(**inputs).logits
            kl = response_token_kl(base, logits, batch["labels"])
            total = task + kl_coefficient * kl
            kl_value = float(kl.detach())
        protected = self._protected_batch()
        if protected:
            guard, _ = self._batch(protected)
            guard_inputs = {"input_ids": guard["input_ids"], "attention_mask": guard["attention_mask"]}
            with torch.no_grad(), self.model.disable_adapter():
                base = self.model(**guard_inputs).logits
            total = total + self.config.protect_kl * response_token_kl(base, self.model(**guard_inputs).logits,
                                                                      guard["labels"])
        return total, float(task.detach()), kl_value

    # ------------------------------------------------------------------ steps

    def learn(self, rows: Sequence[dict[str, Any]], kind: str, multiplier: float, importance: float = 0.0) -> StepReport:
        """`steps_per_turn` steps on `rows` at learning rate × `multiplier` (none if it is 0)."""
        lr = self.config.learning_rate * multiplier
        report = StepReport(kind, lr, self.config.kl_coefficient(kind, importance), rows=len(rows))
        if lr <= 0 or not rows:
            return report
        started = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        for _ in range(self.config.steps_per_turn):
            total, task, kl = self.losses(rows, report.kl_coefficient)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.optimizer.step()
            report.losses.append(task)
            report.kl.append(kl)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        report.seconds = time.perf_counter() - started
        return report

    @torch.no_grad()
    def loss_of(self, rows: Sequence[dict[str, Any]]) -> float:
        """The plain (unweighted) response loss of `rows` now, for metrics."""
        was = self.model.training
        self.model.eval()
        try:
            batch, _ = self._batch([{**r, "entities": []} for r in rows])
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return float(response_loss(logits, batch["labels"], torch.ones_like(batch["sample_weight"])).loss)
        finally:
            self.model.train(was)

    # ------------------------------------------------------------------ state

    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
