"""The two-task forgetting experiment: made-up facts A, then disjoint facts B, per continual recipe.

Cycle 1 trains a fresh adapter on A (plain, shared by every recipe); cycle 2 continues that adapter on
B under each recipe, starting from the same A-trained weights, data order and seed. Forgetting of A is
``(acc_A after A − acc_A after B) / acc_A after A`` in answer token accuracy (teacher forcing).
bench/forgetting.py prints the table; tests/unit/learning_keep holds the default recipe to its claim.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from workers.learning.continual import RECIPES, ContinualConfig, finish_cycle, prepare_cycle
from workers.learning.evaluation import forgetting_ratio, teacher_forced_scores
from workers.learning.kl import load_parent_as_teacher
from workers.learning.replay import in_memory_history


@dataclass(frozen=True)
class ExperimentSettings:
    """Sizes chosen so A is learnt to ~1.0 token accuracy and the run stays a few minutes on 2 cores."""

    facts_per_set: int = 50
    epochs: int = 40
    learning_rate: float = 2e-3
    batch_size: int = 8
    lora_r: int = 16
    seed: int = 0
    threads: int | None = None


@dataclass
class RecipeResult:
    name: str
    a_before: float
    a_after: float
    b_after: float
    forgetting_a: float
    wall_s: float
    penalty_ratio: dict[str, float]

    def row(self) -> dict[str, Any]:
        return {"recipe": self.name, "acc_A_before": self.a_before, "acc_A_after": self.a_after,
                "forgetting_A": self.forgetting_a, "acc_B": self.b_after, "wall_s": self.wall_s,
                "penalty_ratio": self.penalty_ratio}


def run_two_task(recipes: dict[str, ContinualConfig] | Iterable[str], settings: ExperimentSettings = ExperimentSettings(),
                 progress: Any = None, replay_buffers: dict[str, int] | None = None) -> list[RecipeResult]:
    """Train A once, then B under every recipe from the same A-trained adapter; results in order given.

    `replay_buffers` maps a recipe name to a fixed buffer size: that recipe replays only from the
    first N facts of A (a fixed reservoir) instead of a fresh draw from all of A each epoch.
    """
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.synthetic import make_fact_sets
    from workers.learning.tiny import build_tiny_model, build_tokenizer
    from workers.learning.training import TrainConfig, fit

    chosen = recipes if isinstance(recipes, dict) else {name: RECIPES[name] for name in recipes}
    if settings.threads:
        torch.set_num_threads(settings.threads)
    facts_a, facts_b = make_fact_sets(2, settings.facts_per_set, seed=settings.seed)
    tokenizer = build_tokenizer(0)
    torch.manual_seed(settings.seed)  # the adapter's random lora_A init comes from the global RNG
    model = attach_adapter(build_tiny_model(settings.seed),
                           LoraSettings(r=settings.lora_r, alpha=2 * settings.lora_r, dropout=0.0))
    train = TrainConfig(learning_rate=settings.learning_rate, epochs=settings.epochs, batch_size=settings.batch_size,
                        warmup_steps=5, seed=settings.seed)
    fit(model, tokenizer, facts_a, train)
    a_before = teacher_forced_scores(model, tokenizer, facts_a)["token_accuracy"]
    trained_a = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    results = []
    with tempfile.TemporaryDirectory() as parent_dir:
        model.save_pretrained(parent_dir)
        teacher = None
        for name, config in chosen.items():
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in trained_a:
                        p.copy_(trained_a[n])
            if config.kl_strength > 0 and config.kl_teacher == "parent" and teacher is None:
                teacher = load_parent_as_teacher(model, parent_dir)
            start = time.perf_counter()
            fisher = finish_cycle(model, tokenizer, facts_a, config)
            buffer = (replay_buffers or {}).get(name)
            history = in_memory_history(facts_a[:buffer] if buffer else facts_a)
            plan = prepare_cycle(model, facts_b, config, history=history,
                                 fisher=fisher.values if fisher else None, parent_teacher=teacher)
            result = fit(model, tokenizer, plan.rows, train, regularizers=plan.regularizers, tiers=plan.tiers)
            wall = time.perf_counter() - start
            a_after = teacher_forced_scores(model, tokenizer, facts_a)["token_accuracy"]
            b_after = teacher_forced_scores(model, tokenizer, facts_b)["token_accuracy"]
            results.append(RecipeResult(name, a_before, a_after, b_after, forgetting_ratio(a_before, a_after), wall,
                                        result.penalty_ratio))
            if progress is not None:
                progress(results[-1])
    return results
