"""The rounds experiment behind bench/forgetting.py: honest splits, every recipe runs, the table fits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.continual import RECIPES
from workers.learning.rounds import RoundSettings, round_splits, run_rounds
from workers.learning.synthetic import make_sentence_fact_sets


def test_sentence_facts_are_disjoint_and_paraphrased():
    a, b = make_sentence_fact_sets(2, 30, seed=0)
    assert len(a) == len(b) == 30
    assert not {r["prompt"] for r in a} & {r["prompt"] for r in b}
    assert all(r["paraphrase"] != r["prompt"] and r["response"].endswith(".") for r in a + b)


def test_probe_rows_are_never_replayable():
    rounds = make_sentence_fact_sets(2, 30, seed=0)
    train_parts, probe = round_splits(rounds, 0.3)
    assert 4 <= len(probe) <= 16  # about 30% of 30
    replayable = {r["prompt"] for part in train_parts for r in part}
    assert not replayable & {r["prompt"] for r in probe}
    assert len(train_parts[0]) + len(probe) == 30


def test_every_recipe_runs_and_the_table_fits_80_columns(tokenizer):
    model = make_lora_model(trained=False)
    chosen = {name: RECIPES[name] for name in ("naive", "replay", "ewc_lora", "kl", "self_replay")}
    settings = RoundSettings(facts_per_round=6, epochs=1, max_new_tokens=12, retention_max_new_tokens=4)
    runs, shared = run_rounds(model, tokenizer, chosen, settings, self_replay_prompts=["Say hi.", "Count."])
    assert [r.name for r in runs] == list(chosen)
    assert all(len(r.recall_em) == len(r.cycle_s) == 2 for r in runs)
    naive, replay = runs[0], runs[1]
    assert replay.recall_em[0] == naive.recall_em[0]  # round 1 is shared: nothing to replay yet
    assert "self_replay_s" in shared
    spec = importlib.util.spec_from_file_location("bench_forgetting", Path("bench/forgetting.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert all(len(line) <= 80 for line in bench.table(runs, 2))


def test_nested_and_surprise_recipes_train_their_own_first_round():
    """Their first cycle is not plain training, so it must not be shared with naive's."""
    from workers.learning.continual import RECIPES
    from workers.learning.rounds import _round1_inert

    assert _round1_inert(RECIPES["naive"]) and _round1_inert(RECIPES["replay"])
    assert not _round1_inert(RECIPES["nested"]) and not _round1_inert(RECIPES["nested_surprise"])
