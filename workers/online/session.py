"""One lineage's online learning, turn by turn: detect → remember → learn → replay → measure.

`OnlineSession.observe_turn` is what the online job runs for each pending turn, in order; it is also
what the benchmark drives directly. Its metrics:

* **stability** — on anchor prompts (general prompts the lineage was never taught), the perplexity of
  the base model's own answers under the adapter, the KL to the base on those answers, and the
  perplexity drift since the session's first measurement;
* **plasticity** — the recent loss (mean task loss before the first step of the last turns), the loss
  improvement within a turn (first step − after the last step) and the adaptation speed (that
  improvement per step);
* **forgetting** — the anchor regression (relative perplexity rise over the base's, 0 when it fell)
  and the forgetting rate (that regression per 100 turns learnt).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common.online.facts import DEFAULT_PATTERNS, FactPattern, detect_facts, is_question
from common.online.memory import Fact, MemoryChange, MemoryPolicy, observe, replay_choice
from workers.online.learner import OnlineLearner, perplexity
from workers.online.rows import fact_rows, turn_rows

RECENT_TURNS = 20  # the window of the plasticity figures


@dataclass
class TurnResult:
    turn: int
    kind: str  # fact | question | chat
    facts: list[str]
    learnt: dict[str, Any]  # the learner's report for the turn
    replay: dict[str, Any] | None
    change: MemoryChange = field(repr=False, default_factory=MemoryChange)

    def as_dict(self) -> dict[str, Any]:
        # The facts as learnt (after the memory merged repeats): a published version's dataset is built
        # from these (`workers/online/publish.py`), after the memory may have evicted them.
        learnt_facts = [{k: getattr(f, k) for k in ("key", "text", "relation", "subject", "object", "entities")}
                        for f in self.change.seen] if self.kind == "fact" else []
        return {"turn": self.turn, "kind": self.kind, "facts": self.facts, "learnt": self.learnt,
                "replay": self.replay, "learnt_facts": learnt_facts,
                "memory": {"seen": len(self.change.seen), "removed": len(self.change.removed)}}


class AnchorProbe:
    """Stability and forgetting figures on anchor prompts, against the base's own answers to them."""

    def __init__(self, learner: OnlineLearner, prompts: Sequence[str], base_answers: Sequence[str] | None = None,
                 max_new_tokens: int = 24):
        from workers.learning.general_retention import base_model
        from workers.learning.generation import generate_answers

        self.learner = learner
        self.prompts = list(prompts)
        if base_answers is None:
            with base_model(learner.model):
                base_answers = generate_answers(learner.model, learner.tokenizer,
                                                [{"prompt": p} for p in self.prompts], max_new_tokens=max_new_tokens)
        self.base_answers = list(base_answers)
        self.rows = [{"prompt": p, "response": a} for p, a in zip(self.prompts, self.base_answers, strict=True)
                     if a.strip()]
        # The reference is the base model itself: drift and regression say how far learning moved it.
        with base_model(learner.model):
            self.base_perplexity = perplexity(learner.loss_of(self.rows)) if self.rows else float("nan")

    def measure(self, turns: int) -> dict[str, Any]:
        from workers.learning.general_retention import answer_kl

        ppl = perplexity(self.learner.loss_of(self.rows)) if self.rows else float("nan")
        drift = ppl / self.base_perplexity - 1.0 if self.base_perplexity else 0.0
        kl = answer_kl(self.learner.model, self.learner.tokenizer, [r["prompt"] for r in self.rows],
                       [r["response"] for r in self.rows]) if self.rows else float("nan")
        regression = max(0.0, drift)
        return {
            "stability": {"anchor_perplexity": round(ppl, 4), "kl_to_base": round(kl, 6),
                          "perplexity_drift": round(drift, 6)},
            "forgetting": {"anchor_regression": round(regression, 6),
                           "forgetting_rate_per_100_turns": round(100 * regression / max(turns, 1), 6)},
        }


class OnlineSession:
    """Detector, fact memory and learner of one lineage; `observe_turn` applies one chat turn."""

    def __init__(self, learner: OnlineLearner, policy: MemoryPolicy = MemoryPolicy(),
                 patterns: Sequence[FactPattern] = DEFAULT_PATTERNS, memory: dict[str, Fact] | None = None,
                 turns: int = 0, probe: AnchorProbe | None = None):
        self.learner = learner
        self.policy = policy
        self.patterns = tuple(patterns)
        self.memory: dict[str, Fact] = memory if memory is not None else {}
        self.turns = turns  # turns learnt so far (the memory's clock)
        self.probe = probe
        self.recent: deque[dict[str, float]] = deque(maxlen=RECENT_TURNS)

    def observe_turn(self, messages: list[dict[str, str]], response: str) -> TurnResult:
        self.turns += 1
        turn = self.turns
        config = self.learner.config
        said = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        found = detect_facts(said, self.patterns)
        kind = "fact" if found else "question" if is_question(said) else "chat"
        change = observe(self.memory, found, turn, self.policy)
        if kind == "fact":
            rows = [row for fact in change.seen for row in fact_rows(fact)]
            times_seen = max((f.times_seen for f in change.seen), default=1)
            importance = max((f.importance for f in change.seen), default=0.0)
            report = self.learner.learn(rows, "fact", config.multiplier("fact", times_seen), importance)
        else:
            report = self.learner.learn(turn_rows(messages, response), kind, config.multiplier(kind))
        if report.losses:
            self.recent.append({"first": report.losses[0], "last": report.losses[-1], "steps": len(report.losses)})
        replay = None
        if config.replay_every and turn % config.replay_every == 0 and self.memory:
            chosen = replay_choice(self.memory, config.replay_facts)
            rows = [row for fact in chosen for row in fact_rows(fact)]
            importance = sum(f.importance for f in chosen) / len(chosen)
            replay = self.learner.learn(rows, "replay", config.multiplier("replay"), importance).as_dict()
            replay["facts"] = [f.text for f in chosen]
        return TurnResult(turn, kind, [f.text for f in found], report.as_dict(), replay, change)

    def plasticity(self) -> dict[str, Any]:
        if not self.recent:
            return {"recent_loss": None, "loss_improvement": None, "adaptation_speed": None}
        first = sum(r["first"] for r in self.recent) / len(self.recent)
        gain = sum(r["first"] - r["last"] for r in self.recent) / len(self.recent)
        steps = sum(r["steps"] for r in self.recent) / len(self.recent)
        return {"recent_loss": round(first, 6), "loss_improvement": round(gain, 6),
                "adaptation_speed": round(gain / max(steps - 1, 1), 6)}

    def metrics(self) -> dict[str, Any]:
        """Stability, plasticity and forgetting now (the anchor figures need a probe)."""
        measured = self.probe.measure(self.turns) if self.probe is not None else {}
        return {"turns": self.turns, "facts": len(self.memory), "plasticity": self.plasticity(), **measured}
