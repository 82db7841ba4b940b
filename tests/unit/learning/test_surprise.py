"""The surprise objective's second-order term is really there: with it the adapter's gradient differs
from the task gradient alone, and the auxiliary part equals a finite-difference derivative of the
auxiliary loss (float64, tiny model, no clipping active)."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from workers.learning.batching import collate
from workers.learning.formatting import encode_rows
from workers.learning.lora import trainable_parameters
from workers.learning.losses import response_head_loss, response_loss
from workers.learning.surprise import SurpriseLoss
from workers.learning.synthetic import make_fact_sets

from tests.unit.learning.conftest import narrow_lora_model


def _setup(tokenizer):
    model = narrow_lora_model(seed=0).double()
    model.eval()  # no dropout anywhere: the finite differences need a deterministic function
    with torch.no_grad():  # a non-zero lora_B, so both factors have gradients
        for name, param in trainable_parameters(model).items():
            if "lora_B" in name:
                param.normal_(std=0.05)
    rows, _ = make_fact_sets(2, 4, seed=0)
    batch = collate(encode_rows(rows, tokenizer, 64), tokenizer.pad_token_id)
    return model, batch


def _forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


def _surprise_value(model, batch, term) -> float:
    outputs = _forward(model, batch)
    return float(term.loss(model, batch, outputs).detach())


def test_the_second_order_term_matches_finite_differences(tokenizer):
    model, batch = _setup(tokenizer)
    term = SurpriseLoss(model, strength=1.0, layers=(-1,), clip=1e6)
    params = trainable_parameters(model)
    outputs = _forward(model, batch)
    term.loss(model, batch, outputs).backward()
    analytic = {n: p.grad.detach().clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    # The task gradient alone differs from the surprise gradient (the term is not a rescaled copy).
    response_loss(_forward(model, batch).logits, batch["labels"], batch["sample_weight"]).loss.backward()
    task = {n: p.grad.detach().clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    flat_a = torch.cat([g.flatten() for g in analytic.values()])
    flat_t = torch.cat([g.flatten() for g in task.values()])
    assert flat_a.norm() > 0 and torch.nn.functional.cosine_similarity(flat_a, flat_t, dim=0).abs() < 0.99

    # Directional derivatives (the norms' RMSNorm runs in float32 even in a float64 model, so a
    # single coordinate's finite difference drowns in rounding; a direction over all of them does not).
    generator = torch.Generator().manual_seed(0)
    directions = [analytic] + [{n: torch.randn(p.shape, generator=generator, dtype=p.dtype) for n, p in params.items()}
                               for _ in range(2)]
    eps = 1e-3
    for direction in directions:
        norm = sum(float(d.pow(2).sum()) for d in direction.values()) ** 0.5
        unit = {n: d / norm for n, d in direction.items()}
        expected = sum(float((analytic[n] * unit[n]).sum()) for n in params)

        def shifted(sign: float) -> float:
            with torch.no_grad():
                for n, p in params.items():
                    p.add_(sign * eps * unit[n])
            value = _surprise_value(model, batch, term)
            with torch.no_grad():
                for n, p in params.items():
                    p.sub_(sign * eps * unit[n])
            return value

        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
        assert numeric == pytest.approx(expected, rel=0.02, abs=1e-4), (numeric, expected)
    term.close()


def test_the_term_from_fits_head_only_task_loss_equals_the_one_from_full_logits(tokenizer):
    """`fit` hands the term the task loss it computed with the LM head on response positions only;
    the signal, and so the term and its gradient, must be the same as from the full logits."""
    model, batch = _setup(tokenizer)
    term = SurpriseLoss(model, strength=1.0, layers=(-2, -1), clip=1e6)
    params = trainable_parameters(model)
    full = term.loss(model, batch, _forward(model, batch))
    full.backward()
    full_grads = {n: p.grad.detach().clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    head_only = term.loss(model, batch, None, task_loss=response_head_loss(model, batch).loss)
    head_only.backward()
    assert float(full.detach()) > 0
    assert float(head_only.detach()) == pytest.approx(float(full.detach()), rel=1e-6)
    for name, param in params.items():
        torch.testing.assert_close(param.grad, full_grads[name], rtol=1e-5, atol=1e-9)
    term.close()


def test_every_n_and_the_hooks_go_away(tokenizer):
    model, batch = _setup(tokenizer)
    term = SurpriseLoss(model, strength=1.0, layers=(-1,), every=2)
    values = [float(term.loss(model, batch, _forward(model, batch)).detach()) for _ in range(3)]
    assert values[0] > 0 and values[1] == 0 and values[2] > 0
    term.close()
    _forward(model, batch)
    assert term._outputs == {}  # no hook left to capture anything


def test_bad_settings_are_named_together(tokenizer):
    model, _ = _setup(tokenizer)
    with pytest.raises(ConfigError) as refused:
        SurpriseLoss(model, strength=-1, layers=(99,), every=0, clip=0)
    for problem in ("strength", "every", "clip", "layers"):
        assert problem in str(refused.value)


def test_the_recipe_trains_with_it_in_float32_and_gives_the_fused_attention_back(tokenizer):
    """The fused attention kernels have no second derivative: the term switches attention to the plain
    formulation for the run (else backward raises) and restores it when fit ends."""
    from workers.learning.continual import RECIPES, prepare_cycle
    from workers.learning.training import TrainConfig, fit

    model = narrow_lora_model(seed=0)
    before = model.get_base_model().config._attn_implementation
    rows, _ = make_fact_sets(2, 8, seed=0)
    plan = prepare_cycle(model, rows, RECIPES["nested_surprise"])
    assert [r.name for r in plan.regularizers] == ["surprise"] and plan.tiers is not None
    result = fit(model, tokenizer, plan.rows, TrainConfig(learning_rate=1e-3, max_steps=3, batch_size=4),
                 plan.regularizers, tiers=plan.tiers)
    assert result.regularizer_means["surprise"] > 0
    assert model.get_base_model().config._attn_implementation == before


def test_a_4bit_base_leaves_the_term_off_and_says_why(tokenizer):
    from workers.learning.continual import RECIPES, prepare_cycle

    model = narrow_lora_model(seed=0)
    model.is_loaded_in_4bit = True  # what a bitsandbytes 4-bit base reports
    rows, _ = make_fact_sets(2, 4, seed=0)
    plan = prepare_cycle(model, rows, RECIPES["nested_surprise"])
    assert plan.regularizers == [] and any("surprise off: a 4-bit base" in n for n in plan.notes)
