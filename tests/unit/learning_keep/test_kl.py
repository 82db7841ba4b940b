"""KL self-distillation: zero while the adapter equals its teacher, and it holds drift down."""

from __future__ import annotations

import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.continual import ContinualConfig, prepare_cycle
from workers.learning.general_retention import answer_kl
from workers.learning.fisher import batches_for_rows
from workers.learning.kl import KLDistillation, load_parent_as_teacher, response_token_kl, unload_teacher
from workers.learning.training import TrainConfig, fit

TRAIN = TrainConfig(learning_rate=5e-3, epochs=4, batch_size=6, seed=0)


def test_kl_is_zero_when_the_adapter_equals_the_base(tokenizer, fact_sets):
    fresh = make_lora_model(trained=False)  # lora_B = 0: adapted model == base model
    batch = batches_for_rows(fact_sets[0][:6], tokenizer)[0]
    outputs = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert abs(float(KLDistillation(1.0).loss(fresh, batch, outputs).detach())) < 1e-6
    trained = make_lora_model()
    outputs = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert float(KLDistillation(1.0).loss(trained, batch, outputs).detach()) > 1e-4


def test_kl_counts_response_tokens_only():
    teacher = torch.randn(1, 5, 7)
    student = teacher.clone()
    student[0, 0] += 5.0  # differs only at a prompt position
    labels = torch.tensor([[-100, -100, 3, 4, 5]])
    assert float(response_token_kl(teacher, student, labels)) == 0.0
    student[0, 2] += 5.0  # position 2 predicts label[3], a response token
    assert float(response_token_kl(teacher, student, labels)) > 0.0


def test_kl_to_base_reduces_drift(tokenizer, fact_sets):
    new_rows, anchors = fact_sets[0], fact_sets[1]
    drift = {}
    for strength in (0.0, 20.0):
        model = make_lora_model(trained=False)
        fit(model, tokenizer, new_rows, TRAIN, regularizers=[KLDistillation(strength)] if strength else [])
        drift[strength] = answer_kl(model, tokenizer, [r["prompt"] for r in anchors], [r["response"] for r in anchors])
    assert drift[20.0] < 0.5 * drift[0.0]


def test_kl_to_parent_adapter_leaves_the_teacher_frozen(tokenizer, fact_sets, tmp_path):
    model = make_lora_model()
    model.save_pretrained(tmp_path / "parent")
    teacher = load_parent_as_teacher(model, str(tmp_path / "parent"))
    parent_before = {n: p.detach().clone() for n, p in model.named_parameters() if f".{teacher}." in n}
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    batch = batches_for_rows(fact_sets[1][:6], tokenizer)[0]
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert abs(float(KLDistillation(1.0, teacher=teacher).loss(model, batch, outputs).detach())) < 1e-6
    result = fit(model, tokenizer, fact_sets[1], TRAIN, regularizers=[KLDistillation(1.0, teacher=teacher)])
    assert result.regularizer_means["kl"] > 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable_before
    assert all(torch.equal(p, parent_before[n]) for n, p in model.named_parameters() if n in parent_before)
    unload_teacher(model, teacher)
    model.save_pretrained(tmp_path / "child")
    assert not (tmp_path / "child" / teacher).exists()  # only the trained adapter is published


def test_self_replay_kl_applies_to_the_flagged_rows_only(tokenizer, fact_sets):
    """`rows="self_replay"`: the KL of the flagged rows alone; new rows are never pulled to the base."""
    model = make_lora_model()  # trained: the adapter differs from the base everywhere
    rows = [dict(r, self_replay=i % 2 == 0) for i, r in enumerate(fact_sets[0][:6])]
    batch = batches_for_rows(rows, tokenizer)[0]
    assert int(batch["self_replay"].sum()) == 3 and len(batch["self_replay"]) == 6  # batches reorder rows
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    masked = float(KLDistillation(1.0, rows="self_replay").loss(model, batch, outputs).detach())
    flagged = batches_for_rows([r for r in rows if r["self_replay"]], tokenizer)[0]
    alone = model(input_ids=flagged["input_ids"], attention_mask=flagged["attention_mask"])
    expected = float(KLDistillation(1.0).loss(model, flagged, alone).detach())
    whole = float(KLDistillation(1.0).loss(model, batch, outputs).detach())
    assert masked > 1e-4 and abs(masked - whole) > 1e-4
    assert abs(masked - expected) < 1e-4 * max(1.0, expected)
    none = batches_for_rows([dict(r, self_replay=False) for r in rows], tokenizer)[0]
    outputs = model(input_ids=none["input_ids"], attention_mask=none["attention_mask"])
    assert float(KLDistillation(1.0, rows="self_replay").loss(model, none, outputs).detach()) == 0.0


def test_recipe_self_replay_kl_adds_the_masked_regulariser(fact_sets):
    model = make_lora_model(trained=False)
    base_rows = [dict(r, self_replay=True) for r in fact_sets[1][:4]]
    plan = prepare_cycle(model, fact_sets[0][:4], ContinualConfig(self_replay_share=0.5, self_replay_kl=2.0),
                         base_rows=base_rows)
    (reg,) = plan.regularizers
    assert (reg.name, reg.rows, reg.teacher, reg.strength) == ("self_replay_kl", "self_replay", "base", 2.0)
    assert prepare_cycle(model, fact_sets[0][:4], ContinualConfig(self_replay_share=0.5)).regularizers == []


def test_self_replay_weight_sets_the_rows_cross_entropy_weight_and_is_validated(fact_sets):
    import pytest

    from common.errors import ConfigError

    model = make_lora_model(trained=False)
    base_rows = [dict(r, self_replay=True) for r in fact_sets[1][:8]]
    config = ContinualConfig(self_replay_share=0.5, self_replay_kl=1.0, self_replay_weight=0.0)
    rows = prepare_cycle(model, fact_sets[0][:8], config, base_rows=base_rows).rows(0)
    replayed = [r for r in rows if r.get("self_replay")]
    assert replayed and {r["weight"] for r in replayed} == {0.0}  # soft (KL) targets only
    assert {r["weight"] for r in rows if not r.get("self_replay")} == {1.0}
    assert base_rows[0].get("weight", 1.0) == 1.0  # the caller's rows are not modified
    with pytest.raises(ConfigError, match="self_replay_weight 0 with self_replay_kl 0"):
        ContinualConfig(self_replay_share=0.5, self_replay_weight=0.0)
    with pytest.raises(ConfigError, match="self_replay_kl needs self_replay_share"):
        ContinualConfig(self_replay_kl=1.0)
