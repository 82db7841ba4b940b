"""The comparison harness: every strategy on the same documents and QA pairs, one table.

For each strategy a fresh copy of the base model learns the documents one after another (`learn` once
per document, so `ttt`'s alpha and `sparse_memory`'s open units move as they would in use), then:

- **QA accuracy**: the share of the QA pairs whose gold answer occurs in the strategy's answer
  (`strategy.answer_matches`: the general-retention rule, from a word boundary, case-insensitive);
- **general retention**: of the built-in general questions the base model answers right, the share
  still answered right — the promotion gate's measure (`workers.learning.general_retention`);
- **forgetting ratio**: (before − after) / before, with before and after the share of *all* general
  questions answered right (the general QA holdout) by the base and by the strategy; negative = gained;
- learn time, answer time per question, and the artifact's size on disk.

Every answer goes through the strategy's own `answer` (retrieval puts its chunks in front of a general
question too, if it finds any that match), so the table compares what a user would get.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.documents.strategy import DocumentStrategy, answer_matches

GENERAL_TOKENS = 32  # the general-retention answers' budget (EvalSettings.max_new_tokens)


def strategies() -> dict[str, type[DocumentStrategy]]:
    from workers.documents.lora_strategy import LoraStrategy
    from workers.documents.retrieval import RetrievalStrategy
    from workers.documents.sparse_memory import SparseMemoryStrategy
    from workers.documents.ttt import TTTStrategy

    return {"sparse_memory": SparseMemoryStrategy, "ttt": TTTStrategy, "retrieval": RetrievalStrategy,
            "lora": LoraStrategy}


@dataclass
class StrategyResult:
    strategy: str
    changes_weights: bool
    qa_accuracy: float
    general_retention: float | None
    forgetting_ratio: float | None
    general_right_before: float
    general_right_after: float
    learn_seconds: float
    answer_seconds_per_question: float
    artifact_bytes: int
    learnt: list[dict[str, Any]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Baseline:
    """The base model's answers to the general questions: what retention and forgetting compare with."""

    questions: list[dict[str, Any]]
    right: list[bool]

    @classmethod
    def measure(cls, model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]]) -> "Baseline":
        from workers.learning.general_retention import accepted_answers, is_right
        from workers.learning.generation import generate_answers

        answers = generate_answers(model, tokenizer, [{"prompt": q["prompt"]} for q in questions], GENERAL_TOKENS)
        return cls(list(questions), [is_right(a, accepted_answers(q)) for a, q in zip(answers, questions, strict=True)])


def general_figures(strategy: DocumentStrategy, baseline: Baseline) -> tuple[float | None, float | None, float, float]:
    """(general retention, forgetting ratio, share right before, share right after)."""
    from workers.learning.general_retention import accepted_answers, is_right

    answers = strategy.answer([q["prompt"] for q in baseline.questions], GENERAL_TOKENS)
    now = [is_right(a, accepted_answers(q)) for a, q in zip(answers, baseline.questions, strict=True)]
    kept = [n for n, b in zip(now, baseline.right, strict=True) if b]
    before = sum(baseline.right) / len(baseline.right)
    after = sum(now) / len(now)
    retention = sum(kept) / len(kept) if kept else None
    return retention, ((before - after) / before if before else None), before, after


def run_strategy(name: str, load: Callable[[], tuple[Any, Any]], documents: Sequence[Sequence[str]],
                 qa: Sequence[tuple[str, str]], baseline: Baseline, options: dict[str, Any] | None = None,
                 max_new_tokens: int = 32) -> StrategyResult:
    model, tokenizer = load()
    strategy = strategies()[name](model, tokenizer, **(options or {}))
    started = time.perf_counter()
    learnt = [strategy.learn(chunks) for chunks in documents]
    learn_seconds = time.perf_counter() - started
    started = time.perf_counter()
    answers = strategy.answer([q for q, _ in qa], max_new_tokens)
    answer_seconds = (time.perf_counter() - started) / max(len(qa), 1)
    accuracy = sum(answer_matches(a, gold) for a, (_, gold) in zip(answers, qa, strict=True)) / max(len(qa), 1)
    retention, forgetting, before, after = general_figures(strategy, baseline)
    with tempfile.TemporaryDirectory() as tmp:
        size = strategy.save(Path(tmp) / name)
    return StrategyResult(name, strategy.changes_weights, accuracy, retention, forgetting, before, after,
                          round(learn_seconds, 2), round(answer_seconds, 3), size, learnt, answers)


def compare(load: Callable[[], tuple[Any, Any]], documents: Sequence[Sequence[str]], qa: Sequence[tuple[str, str]],
            names: Sequence[str], options: dict[str, dict[str, Any]] | None = None,
            questions: Sequence[dict[str, Any]] | None = None,
            progress: Callable[[StrategyResult], None] | None = None) -> list[StrategyResult]:
    """Run `names` on the same documents (each a list of chunks) and QA pairs; one result per strategy."""
    from workers.evaluate.anchors import general_questions

    unknown = sorted(set(names) - set(strategies()))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(strategies())}")
    model, tokenizer = load()
    baseline = Baseline.measure(model, tokenizer, questions or general_questions())
    base_rows = None
    if any(strategies()[n].changes_weights for n in names):
        from workers.learning.self_replay import default_prompts, self_replay_rows

        # Base protection's rows (the base's own answers to general prompts): the same for every strategy.
        base_rows = self_replay_rows(model, tokenizer, default_prompts())
    del model
    results = []
    for name in names:
        chosen = dict((options or {}).get(name) or {})
        if strategies()[name].changes_weights and chosen.get("protect", True):
            chosen.setdefault("base_rows", base_rows)
        result = run_strategy(name, load, documents, qa, baseline, chosen)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def table(results: Sequence[StrategyResult]) -> str:
    """The comparison as a text table that fits 80 columns."""
    def number(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [f"{'strategy':<14} {'QA acc':>6} {'retain':>6} {'forget':>6} {'learn s':>8} {'answer s':>8} "
             f"{'artifact':>10}"]
    for r in results:
        size = f"{r.artifact_bytes / 1e6:.2f} MB" if r.artifact_bytes >= 1e5 else f"{r.artifact_bytes / 1e3:.1f} kB"
        lines.append(f"{r.strategy:<14} {number(r.qa_accuracy):>6} {number(r.general_retention):>6} "
                     f"{number(r.forgetting_ratio):>6} {r.learn_seconds:>8.1f} {r.answer_seconds_per_question:>8.2f} "
                     f"{size:>10}")
    return "\n".join(lines)
