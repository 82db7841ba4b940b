"""The Fisher is per-sample: fast paths equal the loop, and the batch-gradient shortcut is far off."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.fisher import (
    batches_for_rows,
    combine_online,
    compute_fisher,
    summed_response_loss,
)
from workers.learning.fisher_artifact import FisherArtifact


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(want)
    num = sum(float(((got[k] - want[k]) ** 2).sum()) for k in want)
    den = sum(float((want[k] ** 2).sum()) for k in want)
    return (num / den) ** 0.5


def batch_gradient_squared(model, batches) -> dict[str, torch.Tensor]:
    """The WRONG shortcut (square of the mean gradient), kept only here to show how wrong it is."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = sum(summed_response_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b)
                for b in batches)
    count = sum(b["input_ids"].shape[0] for b in batches)
    grads = torch.autograd.grad(total / count, list(params.values()))
    return {n: g.pow(2) for n, g in zip(params, grads, strict=True)}


@pytest.fixture
def batches(tokenizer, fact_sets):
    rows = [dict(r, weight=w) for r, w in zip(fact_sets[0], [1.0, 0.5, 2.0] * 8, strict=False)]
    rows[3]["unlikelihood"] = True  # a thumbs-down row under the unlikelihood policy
    return batches_for_rows(rows, tokenizer, batch_size=6)


@pytest.mark.parametrize("mode", ["activations", "vmap"])
def test_fast_paths_equal_the_per_sample_loop(lora_model, batches, mode):
    loop = compute_fisher(lora_model, batches, mode="loop")
    fast = compute_fisher(lora_model, batches, mode=mode)
    assert relative_error(fast, loop) < 1e-4
    assert all(float(v.sum()) > 0 for v in loop.values())  # trained adapter: every tensor has signal


def test_batch_gradient_squared_is_materially_different(lora_model, batches):
    correct = compute_fisher(lora_model, batches, mode="fast")
    wrong = batch_gradient_squared(lora_model, batches)
    assert relative_error(wrong, correct) > 0.5
    # and it reorders which entries look important
    k = 50
    flat_c = torch.cat([correct[n].flatten() for n in correct])
    flat_w = torch.cat([wrong[n].flatten() for n in correct])
    overlap = len(set(flat_c.topk(k).indices.tolist()) & set(flat_w.topk(k).indices.tolist())) / k
    assert overlap < 0.8


def test_delta_w_space_fast_equals_loop_and_is_nonzero_on_a_fresh_adapter(batches):
    fresh = make_lora_model(trained=False)  # PEFT init: lora_B = 0
    lora_space = compute_fisher(fresh, batches, mode="fast")
    a_entries = [v for n, v in lora_space.items() if "lora_A" in n]
    assert a_entries and all(float(v.abs().sum()) == 0.0 for v in a_entries)  # the measured trap
    fast = compute_fisher(fresh, batches, mode="fast", space="delta_w")
    loop = compute_fisher(fresh, batches, mode="loop", space="delta_w")
    assert relative_error(fast, loop) < 1e-4
    assert all(float(v.sum()) > 0 for v in fast.values())
    assert {tuple(v.shape) for v in fast.values()} == {(64, 64), (32, 64)}  # q_proj and v_proj weights


def test_fast_mode_falls_back_to_the_loop_when_vmap_cannot_trace(tokenizer, fact_sets, caplog):
    model = make_lora_model()
    model.base_model.model.model.embed_tokens.weight.requires_grad_(True)  # not a Linear: vmap path
    batches = batches_for_rows(fact_sets[0][:6], tokenizer, batch_size=3)

    def untraceable_loss(logits, batch):  # .item() is data-dependent: vmap refuses it
        loss = summed_response_loss(logits, batch)
        return loss * (1.0 if loss.item() >= 0 else 1.0)

    with caplog.at_level(logging.WARNING, logger="workers.learning.fisher"):
        got = compute_fisher(model, batches, mode="fast", loss_fn=untraceable_loss)
    assert "using the per-sample loop" in caplog.text
    want = compute_fisher(model, batches, mode="loop")
    assert relative_error(got, want) < 1e-4


def test_max_samples_bounds_the_estimate(lora_model, batches):
    first = compute_fisher(lora_model, batches, max_samples=6)
    assert relative_error(first, compute_fisher(lora_model, batches[:1])) < 1e-6


def test_online_combine_is_gamma_old_plus_new():
    old = {"a": torch.tensor([1.0, 2.0]), "only_old": torch.tensor([4.0])}
    new = {"a": torch.tensor([10.0, 20.0]), "only_new": torch.tensor([3.0])}
    out = combine_online(old, new, gamma=0.5)
    assert torch.equal(out["a"], torch.tensor([10.5, 21.0]))
    assert torch.equal(out["only_old"], torch.tensor([2.0]))
    assert torch.equal(out["only_new"], torch.tensor([3.0]))
    assert torch.equal(combine_online(None, new, 0.5)["a"], new["a"])
    # three cycles: F3 = γ²F1 + γF2 + F3
    f = combine_online(combine_online({"x": torch.ones(1)}, {"x": 2 * torch.ones(1)}, 0.9), {"x": 3 * torch.ones(1)}, 0.9)
    assert torch.allclose(f["x"], torch.tensor([0.81 + 1.8 + 3.0]))
    with pytest.raises(Exception, match="gamma"):
        combine_online(old, new, gamma=1.5)


def test_artifact_round_trips_with_metadata(tmp_path):
    values = {"layer.lora_A.default.weight": torch.rand(4, 8), "layer.lora_B.default.weight": torch.rand(8, 4)}
    art = FisherArtifact(values, num_samples=42, mode="activations", gamma=0.9, base_model_id="tiny-seed0",
                         extra={"dataset": "ds-1"})
    path = tmp_path / "fisher.safetensors"
    art.save(str(path))
    back = FisherArtifact.load(str(path))
    assert (back.num_samples, back.mode, back.gamma, back.base_model_id, back.space) == (42, "activations", 0.9, "tiny-seed0", "lora")
    assert back.extra == {"dataset": "ds-1"}
    assert all(torch.equal(back.values[k], values[k]) for k in values)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:  # stock safetensors reads it: str→str metadata
        assert fh.metadata()["num_samples"] == "42"
