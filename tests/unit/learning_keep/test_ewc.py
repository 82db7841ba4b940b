"""EWC anchors the adapter to its parent: (λ/2) Σ F (θ − θ*)² by hand, θ* = the parent, pulls weights back.

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- EWC ignoring the Fisher (F = 1): test_lora_space_penalty_equals_the_hand_computed_formula,
  test_delta_w_space_penalty_equals_the_hand_computed_formula, test_the_anchor_is_the_parent_...
- the EWC anchor not the parent — θ* zeros (`snapshot_lora`/`snapshot_delta_w`), or θ* sharing storage
  with the live weights (no copy in `EWC.__init__`): test_the_anchor_is_the_parent_at_cycle_start_...
  (both breaks) and test_lora_space_penalty_... (both) / test_delta_w_space_penalty_... (zeros)
- λ/2 dropped (λ alone): both hand-formula tests
"""

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


def _perturb(model, seed: int = 1, size: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(size * torch.randn(p.shape, generator=gen))


def _random_fisher(shapes: dict[str, torch.Size], seed: int = 2) -> dict[str, torch.Tensor]:
    """A far-from-uniform Fisher (entries spread over 3 orders of magnitude): F = 1 gives another value."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=gen) ** 3 for k, s in shapes.items()}


def test_lora_space_penalty_equals_the_hand_computed_formula():
    model = make_lora_model()
    parent = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fisher = _random_fisher({n: v.shape for n, v in parent.items()})
    ewc = EWC.from_model(model, fisher, strength=7.0, space="lora", scale=3.0)
    _perturb(model)
    now = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    # (λ/2) Σ (scale·F) (θ − θ*)², θ* = the parent's values when EWC was built
    want = 0.5 * 7.0 * sum(float((3.0 * fisher[n] * (now[n] - parent[n]) ** 2).sum()) for n in parent)
    assert float(ewc.penalty(model).detach()) == pytest.approx(want, rel=1e-5)


def test_delta_w_space_penalty_equals_the_hand_computed_formula():
    model = make_lora_model()

    def delta_w() -> dict[str, torch.Tensor]:  # s · B @ A of every LoRA layer, by hand
        out = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                out[name] = (b @ a).detach() * module.scaling["default"]
        return out

    parent = delta_w()
    fisher = _random_fisher({n: v.shape for n, v in parent.items()})
    mean = sum(float(v.sum()) for v in fisher.values()) / sum(v.numel() for v in fisher.values())
    ewc = EWC.from_model(model, fisher, strength=5.0, space="delta_w")  # a bare Fisher: scaled to mean 1
    _perturb(model)
    now = delta_w()
    want = 0.5 * 5.0 * sum(float((fisher[n] / mean * (now[n] - parent[n]) ** 2).sum()) for n in parent)
    assert float(ewc.penalty(model).detach()) == pytest.approx(want, rel=1e-4)


def test_the_anchor_is_the_parent_at_cycle_start_not_the_moving_weights(tokenizer, fact_sets):
    """θ* is a copy of the parent's values taken by prepare_cycle: training moves θ, never θ*."""
    from workers.learning.continual import prepare_cycle, recipe

    model = make_lora_model()
    parent = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fisher = _random_fisher({n: v.shape for n, v in parent.items()})
    plan = prepare_cycle(model, fact_sets[1], recipe("ewc_lora", ewc_strength=4.0), fisher=fisher)
    (ewc,) = plan.regularizers
    assert float(ewc.penalty(model).detach()) == 0.0
    fit(model, tokenizer, fact_sets[1][:6], TrainConfig(learning_rate=5e-3, epochs=1, batch_size=6, seed=0),
        regularizers=plan.regularizers)
    assert all(torch.equal(ewc.anchors[n], parent[n]) for n in parent)
    mean = sum(float(v.sum()) for v in fisher.values()) / sum(v.numel() for v in fisher.values())
    now = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    want = 0.5 * 4.0 * sum(float((fisher[n] / mean * (now[n] - parent[n]) ** 2).sum()) for n in parent)
    assert want > 0 and float(ewc.penalty(model).detach()) == pytest.approx(want, rel=1e-5)
