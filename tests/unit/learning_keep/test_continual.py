"""The recipe glue: what a cycle turns on, what it leaves off and why, and the online Fisher across cycles."""

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
    second = finish_cycle(model, tokenizer, fact_sets[0], config, previous=first)
    # same model, same rows: F2 = 0.5 F1 + F1
    assert all(torch.allclose(second.values[k], 1.5 * first.values[k], rtol=1e-5) for k in first.values)
    assert second.num_samples == 16
    restored = FisherArtifact.from_bytes(second.to_bytes())
    plan = prepare_cycle(model, fact_sets[1], config, fisher=restored.values)
    assert [type(r) for r in plan.regularizers] == [EWC]
    assert finish_cycle(model, tokenizer, fact_sets[0], NAIVE) is None


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
