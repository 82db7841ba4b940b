"""KL self-distillation: zero while the adapter equals its teacher, and it holds drift down."""

from __future__ import annotations

import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.evaluation import kl_drift
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
        drift[strength] = kl_drift(model, tokenizer, anchors)
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
