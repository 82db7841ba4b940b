"""Rounds of made-up facts on a real (or the tiny) model, per continual recipe: what bench/forgetting.py runs.

Each round teaches a fresh set of invented facts in chat form (one-sentence answers, so the base
cannot know them). Per recipe and round it measures:

- **recall**: greedy exact match of the taught answer (whole sentence) and answer token accuracy;
- **forgetting** of round 1 after the last round, on round 1's *probe* rows: taught in round 1 but
  never replayed (replay draws only the other rows), so replay cannot hide forgetting;
- **generalisation**: NLL of the taught answers under *paraphrased* questions that were never trained,
  against the parent (the model before the round): ``nll_gain = parent_nll − nll``;
- **general retention** (`general_retention.score_general_retention`) after the last round;
- seconds per cycle (prepare + fit + the Fisher for the next cycle; the one-off self-replay generation
  is reported apart, because it depends only on the base model and is cached).

Recipes whose first cycle is plain training (no base protection) share one round-1 run.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from workers.learning.continual import ContinualConfig, finish_cycle, prepare_cycle
from workers.learning.evaluation import EvalSettings, forgetting_ratio, teacher_forced_scores

Row = dict[str, Any]


@dataclass(frozen=True)
class RoundSettings:
    """Workload and training settings of one experiment (the recipe supplies the continual part)."""

    rounds: int = 2
    facts_per_round: int = 30
    probe_share: float = 0.3  # of each round: taught, never replayed; forgetting is scored on it
    learning_rate: float = 1e-3
    epochs: int = 8
    lora_r: int = 16
    batch_size: int = 8
    seed: int = 0
    max_new_tokens: int = 40  # longer than every generated fact answer: exact match sees all of it
    retention_max_new_tokens: int = 32


@dataclass
class RecipeRun:
    """One recipe's results over all rounds."""

    name: str
    recall_em: list[float] = field(default_factory=list)  # per round, right after it was taught
    recall_tok: list[float] = field(default_factory=list)
    nll_gain: list[float] = field(default_factory=list)  # per round, on its paraphrases vs the parent
    probe_first: float = float("nan")  # round-1 probe token accuracy right after round 1
    probe_now: float = float("nan")  # ... after the last round
    probe_em_first: float = float("nan")
    probe_em_now: float = float("nan")
    general: dict[str, Any] = field(default_factory=dict)
    cycle_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def forgetting(self) -> float:
        return forgetting_ratio(self.probe_first, self.probe_now)

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data["forgetting"] = self.forgetting
        return data


def is_probe(row: Row, share: float, seed: int = 0) -> bool:
    """A stable hash of the prompt puts `share` of the rows in the probe split."""
    digest = hashlib.sha256(f"probe:{seed}:{row['prompt']}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def round_splits(rounds: Sequence[Sequence[Row]], share: float, seed: int = 0) -> tuple[list[list[Row]], list[Row]]:
    """``(replayable rows per round, round 1's probe rows)``: probe rows are taught but never replayed."""
    train_parts = [[r for r in rows if not is_probe(r, share, seed)] for rows in rounds]
    return train_parts, [r for r in rounds[0] if is_probe(r, share, seed)]


def _round1_inert(config: ContinualConfig) -> bool:
    """True when the recipe's first cycle is plain training (nothing to replay or anchor yet). Nested
    tiers and the surprise term change the first cycle too."""
    return (config.self_replay_share == 0 and not (config.kl_strength > 0 and config.kl_teacher == "base")
            and not config.nested_frequencies and config.surprise_strength == 0)


def _exact_match(model: Any, tokenizer: Any, rows: Sequence[Row], max_new_tokens: int) -> float:
    from workers.learning.generation import exact_match, generate_answers

    return exact_match(generate_answers(model, tokenizer, list(rows), max_new_tokens=max_new_tokens), list(rows))


def _paraphrased(rows: Sequence[Row]) -> list[Row]:
    return [dict(r, prompt=r["paraphrase"]) for r in rows]


def run_rounds(
    model: Any,
    tokenizer: Any,
    recipes: dict[str, ContinualConfig],
    settings: RoundSettings = RoundSettings(),
    questions: Sequence[Any] = (),
    prompts: Sequence[str] = (),
    self_replay_prompts: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    self_replay_given: Sequence[Row] | None = None,
) -> tuple[list[RecipeRun], dict[str, Any]]:
    """Run every recipe over `settings.rounds` rounds from the same fresh adapter on `model` (a PEFT model).

    `self_replay_given`: self-replay rows generated earlier for this base and prompt list (they
    depend on nothing else), so a sweep of several runs generates them once.
    Returns the runs and the shared facts: base general-retention answers, self-replay seconds.
    """
    from workers.learning.general_retention import compute_base_answers, score_general_retention
    from workers.learning.kl import load_parent_as_teacher, unload_teacher
    from workers.learning.replay import in_memory_history
    from workers.learning.self_replay import self_replay_rows
    from workers.learning.synthetic import make_sentence_fact_sets
    from workers.learning.training import TrainConfig, fit

    say = progress or (lambda _msg: None)
    rounds = make_sentence_fact_sets(settings.rounds, settings.facts_per_round, seed=settings.seed)
    train_parts, probe1 = round_splits(rounds, settings.probe_share, settings.seed)
    ev = EvalSettings(max_new_tokens=settings.retention_max_new_tokens, batch_size=32)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def restore(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    shared: dict[str, Any] = {"probe_rows": len(probe1), "train_rows": [len(t) for t in train_parts]}
    start = time.perf_counter()
    base_answers = compute_base_answers(model, tokenizer, list(questions), list(prompts), ev) \
        if (questions or prompts) else None
    shared["base_answers_s"] = time.perf_counter() - start
    base_rows: list[Row] = []
    if self_replay_given is not None:
        base_rows = list(self_replay_given)
        shared["self_replay_rows"] = len(base_rows)
    elif any(c.self_replay_share > 0 for c in recipes.values()):
        start = time.perf_counter()
        base_rows = self_replay_rows(model, tokenizer, list(self_replay_prompts), max_new_tokens=64)
        shared["self_replay_s"] = time.perf_counter() - start
        shared["self_replay_rows"] = len(base_rows)
        say(f"self-replay: {len(base_rows)} rows in {shared['self_replay_s']:.0f}s")
    parent_nll = [teacher_forced_scores(model, tokenizer, _paraphrased(r))["nll"] for r in rounds]  # base
    train = TrainConfig(learning_rate=settings.learning_rate, epochs=settings.epochs,
                        batch_size=settings.batch_size, warmup_steps=3, max_length=256, seed=settings.seed)
    cache: dict[str, Any] = {}  # the shared plain round 1: adapter state, scores, seconds
    runs = []
    for name, config in recipes.items():
        run = RecipeRun(name)
        restore(initial)
        fisher = None
        nll_before = list(parent_nll)
        for index, rows in enumerate(rounds):
            if index == 0 and _round1_inert(config) and cache:
                restore(cache["state"])
                run.recall_em.append(cache["em"])
                run.recall_tok.append(cache["tok"])
                run.nll_gain.append(cache["gain"])
                run.cycle_s.append(cache["seconds"])
                run.probe_first, run.probe_em_first = cache["probe"], cache["probe_em"]
                nll_before = list(cache["nll_after"])
                start = time.perf_counter()
                fisher = finish_cycle(model, tokenizer, rows, config)
                run.cycle_s[0] += time.perf_counter() - start
                continue
            teacher = None
            start = time.perf_counter()
            if index > 0 and config.kl_strength > 0 and config.kl_teacher == "parent":
                parent_dir = tempfile.mkdtemp()
                model.save_pretrained(parent_dir)
                teacher = load_parent_as_teacher(model, parent_dir)
            history = in_memory_history(*train_parts[:index]) if index > 0 else None
            plan = prepare_cycle(model, rows, config, history=history, fisher=fisher, parent_teacher=teacher,
                                 epochs=settings.epochs, base_rows=base_rows)
            run.notes += [f"round {index + 1}: {n}" for n in plan.notes]
            fit(model, tokenizer, plan.rows, train, regularizers=plan.regularizers, tiers=plan.tiers)
            if teacher is not None:
                unload_teacher(model, teacher)
            fisher = finish_cycle(model, tokenizer, rows, config)
            seconds = time.perf_counter() - start
            em = _exact_match(model, tokenizer, rows, settings.max_new_tokens)
            tok = teacher_forced_scores(model, tokenizer, rows)["token_accuracy"]
            nll_after = [teacher_forced_scores(model, tokenizer, _paraphrased(r))["nll"] for r in rounds]
            gain = nll_before[index] - nll_after[index]
            run.recall_em.append(em)
            run.recall_tok.append(tok)
            run.nll_gain.append(gain)
            run.cycle_s.append(seconds)
            if index == 0:
                run.probe_first = teacher_forced_scores(model, tokenizer, probe1)["token_accuracy"]
                run.probe_em_first = _exact_match(model, tokenizer, probe1, settings.max_new_tokens)
                if _round1_inert(config):
                    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                    cache.update(state=state, em=em, tok=tok, gain=gain, seconds=seconds, nll_after=nll_after,
                                 probe=run.probe_first, probe_em=run.probe_em_first)
            nll_before = nll_after
            say(f"{name} round {index + 1}: recall em={em:.2f} tok={tok:.3f} gain={gain:.2f} ({seconds:.0f}s)")
        run.probe_now = teacher_forced_scores(model, tokenizer, probe1)["token_accuracy"]
        run.probe_em_now = _exact_match(model, tokenizer, probe1, settings.max_new_tokens)
        if base_answers is not None:
            run.general = score_general_retention(model, tokenizer, questions, prompts, base_answers, ev)
        say(f"{name}: forgetting={run.forgetting:.3f} general={run.general.get('still_right')}")
        runs.append(run)
    return runs, shared
