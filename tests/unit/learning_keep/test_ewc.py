"""EWC anchors the adapter to its parent: zero at θ*, pulls weights back, and works on a fresh adapter."""

from __future__ import annotations

import pytest
import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.ewc import EWC, snapshot_delta_w
from workers.learning.fisher import batches_for_rows, compute_fisher
from workers.learning.training import TrainConfig, fit

TRAIN = TrainConfig(learning_rate=5e-3, epochs=4, batch_size=6, seed=0)


def delta_w_distance(model, anchors) -> float:
    now = snapshot_delta_w(model)
    return sum(float((now[k] - anchors[k]).pow(2).sum()) for k in anchors) ** 0.5


@pytest.mark.parametrize("space", ["lora", "delta_w"])
def test_penalty_is_zero_at_the_anchor_and_grows_away_from_it(space, tokenizer, fact_sets):
    model = make_lora_model()
    fisher = compute_fisher(model, batches_for_rows(fact_sets[0], tokenizer), space=space)
    ewc = EWC.from_model(model, fisher, strength=10.0, space=space)
    assert float(ewc.penalty(model).detach()) == 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    moved = ewc.penalty(model)
    assert float(moved.detach()) > 0
    moved.backward()  # differentiable: every LoRA tensor gets a gradient back toward θ*
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("space", ["lora", "delta_w"])
def test_ewc_keeps_weights_closer_to_the_parent(space, tokenizer, fact_sets):
    old_rows, new_rows = fact_sets
    distances = {}
    for strength in (0.0, 50.0):
        model = make_lora_model()
        fisher = compute_fisher(model, batches_for_rows(old_rows, tokenizer), space=space)
        anchors = snapshot_delta_w(model)
        ewc = EWC.from_model(model, fisher, strength=strength, space=space)
        result = fit(model, tokenizer, new_rows, TRAIN, regularizers=[ewc] if strength else [])
        distances[strength] = delta_w_distance(model, anchors)
        if strength:
            assert result.penalty_ratio["ewc"] > 0  # fit logs the penalty / task-loss ratio
    assert distances[50.0] < 0.5 * distances[0.0]


def test_first_cycle_delta_w_ewc_anchors_a_fresh_adapter(tokenizer, fact_sets):
    """At PEFT init lora_B = 0: the LoRA-space Fisher of every lora_A is 0, the ΔW-space one is not."""
    old_rows, new_rows = fact_sets
    fresh = make_lora_model(trained=False)
    batches = batches_for_rows(old_rows, tokenizer)
    lora_fisher = compute_fisher(fresh, batches, space="lora")
    assert all(float(v.sum()) == 0.0 for n, v in lora_fisher.items() if "lora_A" in n)
    dw_fisher = compute_fisher(fresh, batches, space="delta_w")
    ewc = EWC.from_model(fresh, dw_fisher, strength=50.0, space="delta_w")
    assert all(float(v.sum()) > 0 for v in ewc.fisher.values())
    fit(fresh, tokenizer, new_rows, TRAIN, regularizers=[ewc])
    anchored = delta_w_distance(fresh, ewc.anchors)

    free = make_lora_model(trained=False)
    fit(free, tokenizer, new_rows, TRAIN)
    assert anchored < 0.5 * delta_w_distance(free, ewc.anchors)


def test_l2_on_delta_w_needs_no_fisher_and_state_round_trips(tokenizer, fact_sets):
    model = make_lora_model()
    l2 = EWC.from_model(model, None, strength=3.0, space="delta_w")
    assert all(torch.equal(f, torch.ones_like(f)) for f in l2.fisher.values())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02)
    before = float(l2.penalty(model).detach())
    copy = EWC({}, None, strength=0.0, space="delta_w")
    copy.load_state_dict(l2.state_dict())
    assert float(copy.penalty(model).detach()) == pytest.approx(before, rel=1e-6)


def test_missing_fisher_entries_are_a_clear_error(lora_model):
    with pytest.raises(Exception, match="recompute the Fisher"):
        EWC.from_model(lora_model, {"nothing": torch.ones(1)}, strength=1.0, space="delta_w")
