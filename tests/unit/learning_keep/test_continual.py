"""The recipe glue: what a cycle turns on, what it leaves off and why, and the online Fisher across cycles.

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- the folded Fisher re-normalised to mean 1 at use (EWC ignoring the artifact's stored scale), or its
  scale re-fixed at every fold: test_ewc_penalty_grows_with_online_accumulation_as_the_math_says
- prepare_cycle handing EWC no Fisher (F = 1): test_ewc_penalty_grows_with_online_accumulation_...
- online fold dropping γF_old: test_online_fisher_accumulates_over_cycles, test_ewc_penalty_grows_...
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.continual import DEFAULT, NAIVE, ContinualConfig, finish_cycle, prepare_cycle, recipe
from workers.learning.ewc import EWC
from workers.learning.fisher_artifact import FisherArtifact
from workers.learning.kl import KLDistillation
from workers.learning.replay import ReplayMixer, in_memory_history


def test_naive_is_plain_training_and_default_turns_mechanisms_on(fact_sets):
    model = make_lora_model()
    plan = prepare_cycle(model, fact_sets[1], NAIVE, history=in_memory_history(fact_sets[0]))
    assert plan.rows == fact_sets[1] and plan.regularizers == []
    plan = prepare_cycle(model, fact_sets[1], DEFAULT, history=in_memory_history(fact_sets[0]), fisher=None)
    assert isinstance(plan.rows, ReplayMixer) and plan.rows.share == DEFAULT.replay_share
    assert "ewc off: no Fisher from an earlier cycle" in plan.notes


def test_first_cycle_leaves_off_what_has_no_input(fact_sets):
    model = make_lora_model(trained=False)
    everything = ContinualConfig(replay_share=0.2, ewc_strength=1.0, kl_strength=1.0, kl_teacher="parent")
    plan = prepare_cycle(model, fact_sets[0], everything)
    assert plan.rows == fact_sets[0] and plan.regularizers == []
    assert len(plan.notes) == 3
    base_kl = prepare_cycle(model, fact_sets[0], recipe("kl", kl_teacher="base"))
    assert [type(r) for r in base_kl.regularizers] == [KLDistillation]


def test_online_fisher_accumulates_over_cycles(tokenizer, fact_sets):
    model = make_lora_model()
    config = recipe("ewc_delta_w", ewc_gamma=0.5, fisher_samples=8)
    first = finish_cycle(model, tokenizer, fact_sets[0], config, base_model_id="tiny")
    assert isinstance(first, FisherArtifact) and first.num_samples == 8 and first.space == "delta_w"
    second = finish_cycle(model, tokenizer, fact_sets[0], config, previous=first, base_model_id="tiny")
    # same model, same rows: F2 = 0.5 F1 + F1
    assert all(torch.allclose(second.values[k], 1.5 * first.values[k], rtol=1e-5) for k in first.values)
    assert second.num_samples == 16
    restored = FisherArtifact.from_bytes(second.to_bytes())
    plan = prepare_cycle(model, fact_sets[1], config, fisher=restored)
    assert [type(r) for r in plan.regularizers] == [EWC]
    assert finish_cycle(model, tokenizer, fact_sets[0], NAIVE) is None


def _penalty_after(model, artifact, config, delta: float = 0.01) -> float:
    """EWC's penalty (built by prepare_cycle from the stored artifact) after a fixed move of every LoRA value."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    plan = prepare_cycle(model, [], config, fisher=FisherArtifact.from_bytes(artifact.to_bytes()))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(delta)
    value = float(plan.regularizers[0].penalty(model).detach())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    return value


def test_ewc_penalty_grows_with_online_accumulation_as_the_math_says(tokenizer, fact_sets):
    """After two online folds of the same Fisher F: F_2 = (1 + γ) F, on the scale fixed by F_1.

    The penalty of the same move is (1 + γ) times the first cycle's, and equals (λ/2) Σ s (1 + γ) F δ²
    with s = 1 / mean(F). Re-normalising the folded Fisher to mean 1 at use gives a ratio of 1 (red).
    """
    model = make_lora_model()
    config = recipe("ewc_lora", ewc_gamma=0.6, ewc_strength=2.0, fisher_samples=8)
    first = finish_cycle(model, tokenizer, fact_sets[0], config, base_model_id="tiny")
    second = finish_cycle(model, tokenizer, fact_sets[0], config, previous=first, base_model_id="tiny")
    third = finish_cycle(model, tokenizer, fact_sets[0], config, previous=second, base_model_id="tiny")
    assert first.scale == second.scale == third.scale  # fixed once, carried forward
    p1, p2, p3 = (_penalty_after(model, a, config) for a in (first, second, third))
    assert p2 / p1 == pytest.approx(1.6, rel=1e-4)
    assert p3 / p1 == pytest.approx(1 + 0.6 + 0.36, rel=1e-4)  # γ² F + γ F + F
    f = first.values
    mean = sum(float(v.double().sum()) for v in f.values()) / sum(v.numel() for v in f.values())
    by_hand = 0.5 * 2.0 * sum(float((f[k].double() / mean * 1.6 * 0.01 ** 2).sum()) for k in f)
    assert p2 == pytest.approx(by_hand, rel=1e-4)


def test_bad_config_is_reported_at_once():
    with pytest.raises(Exception, match="replay_share.*ewc_strength"):
        ContinualConfig(replay_share=1.5, ewc_strength=-1)
    with pytest.raises(Exception, match="unknown continual recipe"):
        recipe("nope")


def test_first_cycle_fisher_anchors_the_base_on_anchor_rows(tokenizer, fact_sets):
    from workers.learning.continual import first_cycle_fisher

    fresh = make_lora_model(trained=False)
    fisher = first_cycle_fisher(fresh, tokenizer, fact_sets[1], recipe("ewc_delta_w", fisher_samples=8))
    assert fisher and all(float(v.sum()) > 0 for v in fisher.values())
    plan = prepare_cycle(fresh, fact_sets[0], recipe("ewc_delta_w"), fisher=fisher)
    assert [type(r) for r in plan.regularizers] == [EWC] and not plan.notes
    assert first_cycle_fisher(fresh, tokenizer, fact_sets[1], recipe("ewc_lora")) is None
