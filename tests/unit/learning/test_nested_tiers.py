"""Nested multi-frequency tiers: configuration, tier assignment, the tiered step's accumulation (mean,
nothing dropped), per-tier optimizer state, checkpoint/resume, and their effect on a tiny model."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from common.objectstore.local import LocalObjectStore
from workers.learning.continual import NAIVE, RECIPES, ContinualConfig, prepare_cycle
from workers.learning.lora import trainable_parameters
from workers.learning.steps import TieredStep
from workers.learning.synthetic import make_fact_sets
from workers.learning.tiers import NestedConfig, TierPlan, layer_index, module_of, plan_tiers
from workers.learning.training import TrainConfig, TrainingStopped, TrainCallbacks, fit

from tests.unit.learning.conftest import narrow_lora_model

# ------------------------------------------------------------------ configuration


def test_presets_and_comma_lists_parse():
    assert NestedConfig.parse("conservative").frequencies == (1, 4, 8)
    assert NestedConfig.parse("balanced").frequencies == (1, 2, 4)
    assert NestedConfig.parse("aggressive").frequencies == (1, 2, 3)
    assert NestedConfig.parse("1, 3", tiers=2).frequencies == (1, 3)


def test_every_problem_is_named_in_one_message():
    with pytest.raises(ConfigError) as refused:
        NestedConfig.parse("4,2,0", tiers=2, strategy="random")
    message = str(refused.value)
    assert message.count("\n") == 0
    for problem in (">= 1", "ascending", "tiers is 2 but 3 frequencies", "strategy must be one of"):
        assert problem in message, message
    with pytest.raises(ConfigError, match="2 to 4 tiers"):
        NestedConfig.parse("1,2,3,4,5")
    with pytest.raises(ConfigError, match="preset .* or a comma list"):
        NestedConfig.parse("fast")
    with pytest.raises(ConfigError, match="ascending"):
        ContinualConfig(nested_frequencies=(2, 2))


def test_a_per_job_override_may_name_a_preset_or_a_comma_list():
    assert ContinualConfig(nested_frequencies="conservative").nested_frequencies == (1, 4, 8)  # type: ignore[arg-type]
    assert ContinualConfig(nested_frequencies="1,3").nested_frequencies == (1, 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="preset .* or a comma list"):
        ContinualConfig(nested_frequencies="fast")  # type: ignore[arg-type]


# ------------------------------------------------------------------ tier assignment

NAMES = [f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{f}.default.weight"
         for layer in range(4) for proj in ("q_proj", "v_proj") for f in ("A", "B")]


def test_depth_bands_keep_both_factors_of_a_module_together():
    plan = plan_tiers(NAMES, NestedConfig(frequencies=(1, 2)))
    for name in NAMES:
        partner = name.replace("lora_A", "lora_B") if "lora_A" in name else name.replace("lora_B", "lora_A")
        assert plan.assignment[name] == plan.assignment[partner]
    assert {plan.assignment[n] for n in NAMES if layer_index(n) < 2} == {0}  # shallow → fast
    assert {plan.assignment[n] for n in NAMES if layer_index(n) >= 2} == {1}
    reverse = plan_tiers(NAMES, NestedConfig(frequencies=(1, 2), shallow="slow"))
    assert {reverse.assignment[n] for n in NAMES if layer_index(n) < 2} == {1}


def test_importance_puts_the_most_important_modules_in_the_slowest_tier():
    importance = {n: float(layer_index(n) == 1 and "q_proj" in n) * 10 + 0.1 for n in NAMES}
    plan = plan_tiers(NAMES, NestedConfig(frequencies=(1, 2, 4), strategy="importance"), importance)
    top = module_of(next(n for n in NAMES if layer_index(n) == 1 and "q_proj" in n))
    assert {plan.assignment[n] for n in NAMES if module_of(n) == top} == {2}
    assert sum(1 for n in NAMES if plan.assignment[n] == 0) >= 4
    fallback = plan_tiers(NAMES, NestedConfig(frequencies=(1, 2), strategy="importance"), None)
    assert fallback.strategy == "depth" and "no Fisher" in fallback.notes[0]


# ------------------------------------------------------------------ the tiered step


class _Config:
    learning_rate, weight_decay, warmup_steps, schedule, min_lr_ratio = 0.1, 0.0, 0, "constant", 1.0
    max_grad_norm = None


def _two_tier_step(accumulate: bool = True):
    params = {"fast.lora_A.weight": torch.nn.Parameter(torch.zeros(3)),
              "slow.lora_A.weight": torch.nn.Parameter(torch.zeros(3))}
    plan = TierPlan(frequencies=(1, 2), assignment={"fast.lora_A.weight": 0, "slow.lora_A.weight": 1},
                    strategy="depth")
    step = TieredStep(params, _Config(), total_steps=10, plan=plan, accumulate=accumulate)
    seen: list[dict[str, torch.Tensor | None]] = []
    step.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        {n: (p.grad.clone() if p.grad is not None else None) for n, p in params.items()}))
    return params, step, seen


def _feed(params, step, grads):
    for g in grads:
        for p in params.values():
            p.grad = torch.full((3,), float(g))
        step.step()


def test_a_slow_tier_applies_the_mean_of_the_gradients_it_collected():
    params, step, seen = _two_tier_step()
    _feed(params, step, [1.0, 3.0, 5.0])
    assert seen[0]["slow.lora_A.weight"] is None and torch.equal(seen[0]["fast.lora_A.weight"], torch.full((3,), 1.0))
    assert torch.equal(seen[1]["slow.lora_A.weight"], torch.full((3,), 2.0))  # (1 + 3) / 2, not the sum 4
    assert seen[2]["slow.lora_A.weight"] is None
    step.finish()  # nothing dropped: step 3's gradient is applied at the end
    assert torch.equal(seen[3]["slow.lora_A.weight"], torch.full((3,), 5.0)) and seen[3]["fast.lora_A.weight"] is None
    stats = step.stats()
    assert [s["updates"] for s in stats] == [3, 2] and [s["frequency"] for s in stats] == [1, 2]
    # Per-tier optimizer state: Adam's step count advanced only at each tier's own updates.
    state = step.optimizer.state
    assert int(state[params["fast.lora_A.weight"]]["step"]) == 3
    assert int(state[params["slow.lora_A.weight"]]["step"]) == 2


def test_dropping_instead_of_accumulating_loses_the_skipped_steps():
    params, step, seen = _two_tier_step(accumulate=False)
    _feed(params, step, [1.0, 3.0, 5.0])
    step.finish()
    assert torch.equal(seen[1]["slow.lora_A.weight"], torch.full((3,), 3.0))  # only step 2's gradient
    assert len(seen) == 3  # and step 3's is never applied


# ------------------------------------------------------------------ on a tiny model


@pytest.fixture(scope="module")
def facts():
    a, b = make_fact_sets(2, 16, seed=0)
    return a, b


def _train(tokenizer, rows, plan_for=None, steps: int = 24, **fit_kwargs):
    model = narrow_lora_model(seed=0)
    tiers = plan_for(model) if plan_for else None
    config = TrainConfig(learning_rate=3e-3, max_steps=steps, batch_size=4, seed=0, max_grad_norm=1.0)
    result = fit(model, tokenizer, rows, config, tiers=tiers, **fit_kwargs)
    return model, result, tiers


def _depth_plan(frequencies=(1, 2, 4)):
    def plan(model):
        return plan_tiers(list(trainable_parameters(model)), NestedConfig(frequencies=frequencies))
    return plan


def test_slow_tiers_move_less_per_step_than_fast_tiers(tokenizer, facts):
    start = {n: p.detach().clone() for n, p in trainable_parameters(narrow_lora_model(seed=0)).items()}
    reported: list[dict] = []
    model, result, tiers = _train(tokenizer, facts[0], _depth_plan(),
                                  callbacks=TrainCallbacks(details=reported.append))
    assert reported and [t["updates"] for t in reported[-1]["tiers"]] == [24, 12, 6]  # progress sees them
    moved = [0.0, 0.0, 0.0]
    sizes = [0, 0, 0]
    for name, param in trainable_parameters(model).items():
        tier = tiers.assignment[name]
        moved[tier] += float((param.detach() - start[name]).pow(2).sum())
        sizes[tier] += param.numel()
    per_parameter = [(m / s) ** 0.5 for m, s in zip(moved, sizes)]
    assert per_parameter[0] > per_parameter[1] > per_parameter[2] > 0, per_parameter
    assert [t["updates"] for t in result.tiers] == [24, 12, 6]
    assert all(t["mean_update_norm"] > 0 for t in result.tiers)


def test_accumulation_ends_closer_to_the_plain_solution_than_dropping(tokenizer, facts, monkeypatch):
    plain, _, _ = _train(tokenizer, facts[0])
    accumulated, _, tiers = _train(tokenizer, facts[0], _depth_plan((1, 4)))
    original = TieredStep.__init__

    def dropping(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "accumulate": False})

    monkeypatch.setattr(TieredStep, "__init__", dropping)
    dropped, _, _ = _train(tokenizer, facts[0], _depth_plan((1, 4)))
    target = {n: p.detach() for n, p in trainable_parameters(plain).items()}

    def distance(model) -> float:
        return sum(float((p.detach() - target[n]).pow(2).sum())
                   for n, p in trainable_parameters(model).items() if tiers.assignment[n] == 1) ** 0.5

    print(f"slow tier distance to the plain run: accumulated {distance(accumulated):.4f}, dropped {distance(dropped):.4f}")
    assert distance(accumulated) < distance(dropped), (distance(accumulated), distance(dropped))


def test_a_resumed_tiered_run_equals_an_uninterrupted_one(tokenizer, facts, tmp_path):
    whole, _, _ = _train(tokenizer, facts[0], _depth_plan(), steps=10)
    store = LocalObjectStore(tmp_path)
    calls = {"n": 0}

    def stop_at_step_5() -> bool:
        calls["n"] += 1
        return calls["n"] == 5

    model = narrow_lora_model(seed=0)
    tiers = _depth_plan()(model)
    config = TrainConfig(learning_rate=3e-3, max_steps=10, batch_size=4, seed=0, max_grad_norm=1.0,
                         cancel_check_every=1)
    with pytest.raises(TrainingStopped):
        fit(model, tokenizer, facts[0], config, callbacks=TrainCallbacks(stop=stop_at_step_5),
            checkpoint_store=store, checkpoint_prefix="ckpt", tiers=tiers)
    resumed = narrow_lora_model(seed=0)
    result = fit(resumed, tokenizer, facts[0], config, checkpoint_store=store, checkpoint_prefix="ckpt",
                 tiers=_depth_plan()(resumed))
    assert result.resumed_from is not None and [t["updates"] for t in result.tiers] == [10, 5, 3]
    expected = {n: p.detach() for n, p in trainable_parameters(whole).items()}
    for name, param in trainable_parameters(resumed).items():
        assert torch.equal(param.detach(), expected[name]), name


def test_the_nested_recipe_plans_tiers_and_the_plain_recipe_does_not(tokenizer, facts):
    model = narrow_lora_model(seed=0)
    plan = prepare_cycle(model, facts[0], RECIPES["nested"])
    assert plan.tiers is not None and plan.tiers.frequencies == (1, 2, 4)
    assert set(plan.tiers.assignment) == set(trainable_parameters(model))
    assert prepare_cycle(model, facts[0], NAIVE).tiers is None


def test_importance_tiers_come_from_a_real_lora_fisher(tokenizer, facts):
    """Through prepare_cycle with a Fisher computed on the model (its keys must be the trainable
    parameters' names): the module with the largest mean Fisher lands in the slowest tier."""
    from workers.learning.fisher import batches_for_rows, compute_fisher
    from workers.learning.tiers import fisher_importance

    model = narrow_lora_model(seed=0)
    with torch.no_grad():  # a trained-looking adapter, so lora_A has a Fisher too
        for name, param in trainable_parameters(model).items():
            if "lora_B" in name:
                param.normal_(std=0.05)
    fisher = compute_fisher(model, batches_for_rows(facts[0], tokenizer, batch_size=4), space="lora")
    config = ContinualConfig(nested_frequencies=(1, 2, 4), nested_strategy="importance")
    plan = prepare_cycle(model, facts[1], config, fisher=fisher)
    assert plan.tiers.strategy == "importance" and not plan.notes
    importance = fisher_importance(fisher)
    by_module: dict[str, list[float]] = {}
    for name, value in importance.items():
        by_module.setdefault(module_of(name), []).append(value)
    top = max(by_module, key=lambda m: sum(by_module[m]) / len(by_module[m]))
    bottom = min(by_module, key=lambda m: sum(by_module[m]) / len(by_module[m]))
    assert {plan.tiers.assignment[n] for n in importance if module_of(n) == top} == {2}
    assert {plan.tiers.assignment[n] for n in importance if module_of(n) == bottom} == {0}
