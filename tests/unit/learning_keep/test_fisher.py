"""The Fisher is per-sample: every path equals a hand-computed mean of squared per-sample gradients.

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- sum instead of mean (`compute_fisher` not dividing by the sample count):
  test_every_path_equals_the_hand_computed_mean_of_squares[all five paths]
- the activations path counting batches, not samples: ...[activations-lora, activations-delta_w]
- |g| instead of g² in the activations path in LoRA space (...[activations-lora]) and in ΔW space
  (...[activations-delta_w, loop-delta_w]), in the vmap path (...[vmap-lora]), in the loop path
  (...[loop-lora])
- the per-sample loss not scaled back to a sum (`summed_response_loss` returning the batch mean):
  ...[activations-lora, activations-delta_w]
- the stored scale dropped or re-fixed at every fold: test_fold_keeps_the_first_scale_and_accumulates
"""

from __future__ import annotations

import logging

import pytest
import torch

from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.fisher import (
    batches_for_rows,
    combine_online,
    compute_fisher,
    lora_wrapped_layers,
    summed_response_loss,
)
from workers.learning.fisher_artifact import FisherArtifact, fold
from workers.learning.losses import response_loss


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


def hand_fisher(model, batches, space: str) -> dict[str, torch.Tensor]:
    """mean_i (∂ loss_i / ∂θ)², one sample at a time with `torch.autograd.grad`, nothing shared with fisher.py.

    Each sample is run alone, cut to its real tokens; its loss is the training loss of a batch of one.
    ΔW space: θ is each LoRA-wrapped layer's base weight W (∂/∂W equals ∂/∂(W + ΔW)).
    """
    model.eval()
    if space == "lora":
        tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    else:
        tensors = {name: layer.base_layer.weight for name, layer in lora_wrapped_layers(model).items()}
    frozen = [t for t in tensors.values() if not t.requires_grad]
    for t in frozen:
        t.requires_grad_(True)
    try:
        sums = {n: torch.zeros_like(t) for n, t in tensors.items()}
        count = 0
        for batch in batches:
            for i in range(batch["input_ids"].shape[0]):
                real = int(batch["attention_mask"][i].sum())
                logits = model(input_ids=batch["input_ids"][i : i + 1, :real]).logits
                loss = response_loss(logits, batch["labels"][i : i + 1, :real], batch["sample_weight"][i : i + 1],
                                     batch["unlikelihood"][i : i + 1]).loss
                for name, g in zip(tensors, torch.autograd.grad(loss, list(tensors.values())), strict=True):
                    sums[name] += g.detach() ** 2
                count += 1
    finally:
        for t in frozen:
            t.requires_grad_(False)
    return {n: s / count for n, s in sums.items()}


@pytest.mark.parametrize(("mode", "space"), [("activations", "lora"), ("vmap", "lora"), ("loop", "lora"),
                                             ("activations", "delta_w"), ("loop", "delta_w")])
def test_every_path_equals_the_hand_computed_mean_of_squares(tokenizer, fact_sets, mode, space):
    rows = [dict(r, weight=w) for r, w in zip(fact_sets[0][:10], [1.0, 0.5, 2.0] * 4, strict=False)]
    rows[3]["unlikelihood"] = True
    batches = batches_for_rows(rows, tokenizer, batch_size=4)  # 4 + 4 + 2: uneven, padded batches
    model = make_lora_model()
    want = hand_fisher(model, batches, space)
    got = compute_fisher(model, batches, mode=mode, space=space)
    assert relative_error(got, want) < 1e-4
    assert all(float(v.sum()) > 0 for v in want.values())


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


def test_fold_keeps_the_first_scale_and_accumulates():
    """Normalisation is fixed once per online chain; re-normalising would cancel the accumulation."""
    f1 = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0, 2.0])}  # mean 2 → scale 0.5
    first = fold(None, f1, num_samples=4, mode="loop", space="lora", gamma=0.5, base_model_id="m", adapter_id=1)
    assert first.scale == pytest.approx(0.5)
    f2 = {"a": torch.tensor([4.0, 4.0]), "b": torch.tensor([0.0, 8.0])}
    second = fold(FisherArtifact.from_bytes(first.to_bytes()), f2, num_samples=4, mode="loop", space="lora",
                  gamma=0.5, base_model_id="m", adapter_id=2)
    assert second.scale == pytest.approx(0.5) and second.num_samples == 8 and second.adapter_id == 2
    assert torch.allclose(second.values["a"], torch.tensor([4.5, 5.5]))
    assert torch.allclose(second.scaled()["b"], 0.5 * torch.tensor([1.0, 9.0]))  # mean 4 now, not 1
    # Another space or base model cannot be folded in: the chain (and its scale) starts afresh.
    other = fold(second, f2, num_samples=4, mode="loop", space="delta_w", gamma=0.5, base_model_id="m")
    assert other.scale == pytest.approx(0.25) and other.num_samples == 4
    assert fold(second, f2, num_samples=4, mode="loop", space="lora", gamma=0.5, base_model_id="x").num_samples == 4


def test_artifact_round_trips_with_metadata(tmp_path):
    values = {"layer.lora_A.default.weight": torch.rand(4, 8), "layer.lora_B.default.weight": torch.rand(8, 4)}
    art = FisherArtifact(values, num_samples=42, mode="activations", gamma=0.9, base_model_id="tiny-seed0",
                         extra={"dataset": "ds-1"}, scale=0.25, adapter_id=7, recipe={"name": "default"})
    path = tmp_path / "fisher.safetensors"
    art.save(str(path))
    back = FisherArtifact.load(str(path))
    assert (back.num_samples, back.mode, back.gamma, back.base_model_id, back.space) == (42, "activations", 0.9, "tiny-seed0", "lora")
    assert back.extra == {"dataset": "ds-1"}
    assert (back.scale, back.adapter_id, back.recipe) == (0.25, 7, {"name": "default"})
    assert all(torch.equal(back.values[k], values[k]) for k in values)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:  # stock safetensors reads it: str→str metadata
        assert fh.metadata()["num_samples"] == "42"
