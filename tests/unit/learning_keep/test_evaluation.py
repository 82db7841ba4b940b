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
    kl_drift,
    teacher_forced_scores,
)
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


def test_training_raises_recall_and_the_cycle_report_is_json(tokenizer, fact_sets):
    taught, earlier = fact_sets[0][:8], fact_sets[1][:8]
    model = make_lora_model(trained=False, targets=ALL_LINEAR)
    settings = EvalSettings(max_samples=8, max_exact_match=8)
    before = teacher_forced_scores(model, tokenizer, taught, settings)["token_accuracy"]
    assert kl_drift(model, tokenizer, earlier, settings) == pytest.approx(0.0, abs=1e-7)
    fit(model, tokenizer, taught, TrainConfig(learning_rate=5e-3, epochs=60, batch_size=8, seed=0))
    report = evaluate_cycle(model, tokenizer, taught, holdout_rows=earlier[:4], earlier={"A": earlier},
                            before={"A": 0.5}, anchor_rows=earlier, settings=settings)
    assert report["plasticity"]["token_accuracy"] >= 0.9 > before
    assert report["plasticity"]["exact_match"] >= 0.75
    assert report["holdout"]["nll"] > report["plasticity"]["nll"]
    retention = report["retention"]["A"]
    assert retention["forgetting"] == pytest.approx((0.5 - retention["token_accuracy"]) / 0.5)
    assert report["kl_drift"] > 0
    json.dumps(report, allow_nan=False)  # strict JSON: the evaluation row stores it as is
    again = evaluate_cycle(model, tokenizer, taught, holdout_rows=earlier[:4], earlier={"A": earlier},
                           before={"A": 0.5}, anchor_rows=earlier, settings=settings)
    assert again == report  # deterministic


def test_teacher_forced_scores_leave_the_model_in_training_mode(tokenizer, fact_sets):
    model = make_lora_model()
    model.train()
    scores = teacher_forced_scores(model, tokenizer, fact_sets[0][:4])
    assert model.training and scores["samples"] == 4 and scores["tokens"] > 0
    assert torch.is_grad_enabled()
