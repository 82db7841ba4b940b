"""Evaluation: bounded, deterministic, JSON-ready, and its numbers move the right way."""

from __future__ import annotations

import json

import pytest
import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.evaluation import (
    EvalSettings,
    accuracy_matrix,
    backward_transfer,
    bounded_sample,
    evaluate_cycle,
    forgetting_ratio,
    greedy_exact_match,
    mean_response_logprob,
    teacher_forced_scores,
)
from workers.learning.general_retention import answer_kl
from workers.learning.lora import DEFAULT_TARGETS as ALL_LINEAR
from workers.learning.training import TrainConfig, fit


def test_bounded_sample_is_capped_stable_and_order_free(fact_sets):
    rows = fact_sets[0] + fact_sets[1]
    picked = bounded_sample(rows, 10, seed=0)
    assert len(picked) == 10
    assert picked == bounded_sample(list(reversed(rows)), 10, seed=0)
    assert picked != bounded_sample(rows, 10, seed=1)
    assert bounded_sample(rows[:5], 10) == rows[:5]


def test_forgetting_backward_transfer_and_matrix():
    assert forgetting_ratio(0.8, 0.2) == pytest.approx(0.75)
    assert forgetting_ratio(0.0, 0.5) == 0.0  # nothing known, nothing forgotten
    assert forgetting_ratio(0.5, 0.6) == pytest.approx(-0.2)  # improved: negative forgetting
    matrix = [[0.9, 0.0], [0.6, 0.95]]  # v1 taught A, v2 taught B and kept 0.6 of A
    assert backward_transfer(matrix) == pytest.approx(-0.3)
    table = accuracy_matrix({"v1": {"A": 0.9}, "v2": {"A": 0.6, "B": 0.95}}, ["v1", "v2"], ["A", "B"])
    assert table["matrix"] == [[0.9, None], [0.6, 0.95]]


def _disliked(rows):
    """Thumbs-down rows as the default export writes them (unlikelihood, never a positive target)."""
    return [dict(r, feedback="thumbs_down", unlikelihood=True, id=f"down-{r['id']}") for r in rows]


def test_training_raises_recall_and_the_cycle_report_is_json(tokenizer, fact_sets):
    taught, disliked = fact_sets[0][:8], _disliked(fact_sets[0][8:12])
    holdout, earlier = fact_sets[1][:4], fact_sets[1][8:16]
    model = make_lora_model(trained=False, targets=ALL_LINEAR)
    settings = EvalSettings(max_samples=8, max_exact_match=8)
    before = teacher_forced_scores(model, tokenizer, taught, settings)["token_accuracy"]
    assert answer_kl(model, tokenizer, [r["prompt"] for r in earlier], [r["response"] for r in earlier],
                     settings) == pytest.approx(0.0, abs=1e-7)
    fit(model, tokenizer, taught + disliked, TrainConfig(learning_rate=5e-3, epochs=60, batch_size=8, seed=0))

    def evaluate():
        return evaluate_cycle(model, tokenizer, taught + disliked, holdout_rows=holdout, probe_rows=taught[:4],
                              earlier_probe={"A": earlier}, first={"A": 0.5}, settings=settings, exact_match=True)

    report = evaluate()
    # recall: the positive taught rows only; the thumbs-down rows are scored as suppression instead.
    assert report["recall"]["samples"] == 8 and report["recall"]["token_accuracy"] >= 0.9 > before
    assert report["recall"]["exact_match"] >= 0.75
    assert report["recall_probe"]["samples"] == 4
    candidate_lp = mean_response_logprob(model, tokenizer, disliked, settings)
    with model.disable_adapter():
        base_lp = mean_response_logprob(model, tokenizer, disliked, settings)
    assert report["suppression"]["rows"] == 4
    assert report["suppression"]["logprob_drop"] == pytest.approx(base_lp - candidate_lp)
    # generalisation: the holdout rows only, against the parent (here the base: adapter off).
    generalisation = report["generalisation"]
    assert generalisation["samples"] == 4
    assert generalisation["nll"] == pytest.approx(teacher_forced_scores(model, tokenizer, holdout, settings)["nll"])
    with model.disable_adapter():
        base = teacher_forced_scores(model, tokenizer, holdout, settings)
    assert generalisation["parent_nll"] == pytest.approx(base["nll"])
    assert generalisation["nll_gain"] == pytest.approx(base["nll"] - generalisation["nll"])
    # retention: against the stored first-taught score, not against anything measured now.
    retention = report["retention"]["A"]
    assert retention["first"] == 0.5 and retention["samples"] == 8
    assert retention["forgetting"] == pytest.approx((0.5 - retention["now"]) / 0.5)
    assert report["forgetting_max"] == report["forgetting_mean"] == pytest.approx(retention["forgetting"])
    json.dumps(report, allow_nan=False)  # strict JSON: the evaluation row stores it as is
    assert evaluate() == report  # deterministic


def test_suppression_shows_a_disliked_answer_learned_as_positive(tokenizer, fact_sets):
    """The same thumbs-down rows, trained with unlikelihood vs as positive targets (the old default):
    suppression must tell them apart, the positive one raising the disliked answer's probability."""
    taught = fact_sets[0][:8]
    drops = {}
    for policy, flag in (("unlikelihood", True), ("train_as_positive", False)):
        disliked = [dict(r, feedback="thumbs_down", unlikelihood=flag, weight=1.0 if flag else 0.5)
                    for r in fact_sets[0][8:12]]
        model = make_lora_model(trained=False, targets=ALL_LINEAR)
        fit(model, tokenizer, taught + disliked, TrainConfig(learning_rate=5e-3, epochs=40, batch_size=8, seed=0))
        drops[policy] = evaluate_cycle(model, tokenizer, taught + disliked)["suppression"]["logprob_drop"]
    assert drops["train_as_positive"] < -0.5 and drops["unlikelihood"] > drops["train_as_positive"] + 0.5


def test_recall_never_counts_thumbs_down_rows(tokenizer, fact_sets):
    """Untaught disliked rows next to taught ones: counted as recall they would drag it down."""
    taught = fact_sets[0][:8]
    model = make_lora_model(trained=False, targets=ALL_LINEAR)
    fit(model, tokenizer, taught, TrainConfig(learning_rate=5e-3, epochs=60, batch_size=8, seed=0))
    down = [dict(r, feedback="thumbs_down", unlikelihood=False, weight=0.5) for r in fact_sets[1][:8]]
    report = evaluate_cycle(model, tokenizer, taught + down, settings=EvalSettings(max_samples=16))
    only_taught = teacher_forced_scores(model, tokenizer, taught)["token_accuracy"]
    assert report["recall"]["samples"] == 8
    assert report["recall"]["token_accuracy"] == pytest.approx(only_taught)
    assert report["recall"]["exact_match"] is None  # opt-in
    assert report["suppression"]["rows"] == 8
    assert report["forgetting_max"] is None and report["retention"] == {}  # nothing earlier: not 0.0


def test_exact_match_compares_a_reference_longer_than_32_tokens(tokenizer, fact_sets):
    rows = [dict(fact_sets[0][i], response=" then ".join(r["response"] for r in fact_sets[1][i * 6 : i * 6 + 6]))
            for i in range(2)]
    assert min(len(tokenizer(r["response"])["input_ids"]) for r in rows) > 32
    model = make_lora_model(trained=False, targets=ALL_LINEAR)
    fit(model, tokenizer, rows, TrainConfig(learning_rate=5e-3, epochs=150, batch_size=2, seed=0))
    assert greedy_exact_match(model, tokenizer, rows) == 1.0
    # The old 32-token budget cuts these answers, so the same model scored 0 before.
    from workers.learning.generation import exact_match, generate_answers

    assert exact_match(generate_answers(model, tokenizer, rows, max_new_tokens=32), rows) == 0.0


def test_teacher_forced_scores_leave_the_model_in_training_mode(tokenizer, fact_sets):
    model = make_lora_model()
    model.train()
    scores = teacher_forced_scores(model, tokenizer, fact_sets[0][:4])
    assert model.training and scores["samples"] == 4 and scores["tokens"] > 0
    assert torch.is_grad_enabled()
