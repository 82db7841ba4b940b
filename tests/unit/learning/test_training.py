"""fit(): learns invented facts, resumes exactly, reports progress, honours regularisers and cancellation."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from common.objectstore.local import LocalObjectStore
from workers.learning.device import select_device
from workers.learning.generation import exact_match, generate_answers
from workers.learning.lora import LoraSettings, attach_adapter, trainable_parameters
from workers.learning.models import load_model_and_tokenizer
from workers.learning.synthetic import make_facts
from workers.learning.training import TrainCallbacks, TrainConfig, TrainingStopped, fit

from .conftest import narrow_lora_model


def test_training_on_invented_facts_raises_exact_match_from_zero_to_at_least_0_9(tiny_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_dir, select_device("cpu"))
    torch.manual_seed(0)
    model = attach_adapter(model, LoraSettings())
    facts = make_facts(40, seed=1)
    before = exact_match(generate_answers(model, tokenizer, facts), facts)
    result = fit(model, tokenizer, facts,
                 TrainConfig(learning_rate=2e-3, epochs=40, batch_size=8, warmup_steps=5, seed=0))
    after = exact_match(generate_answers(model, tokenizer, facts), facts)
    print(f"exact match before={before:.3f} after={after:.3f} steps={result.steps} "
          f"tokens/s={result.useful_tokens_per_s:.0f}")
    assert before <= 0.05
    assert after >= 0.9
    assert result.loss_curve[-1] < result.loss_curve[0] / 2


def _adapter(model):
    return {n: p.detach().clone() for n, p in trainable_parameters(model).items()}


def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(tokenizer, tmp_path):
    rows = make_facts(32, seed=2)  # 8 batches of 4 → 4 steps per epoch
    # Dropout on, grad accumulation and two epochs: resume must restore RNG, data position and optimiser.
    config = TrainConfig(learning_rate=3e-3, epochs=2, batch_size=4, grad_accum=2, warmup_steps=2,
                         checkpoint_every=2, cancel_check_every=1, seed=5)
    reference_model = narrow_lora_model(seed=1, dropout=0.1)
    reference = fit(reference_model, tokenizer, rows, config)
    expected = _adapter(reference_model)
    assert reference.steps == 8

    store = LocalObjectStore(tmp_path / "store")
    calls = {"n": 0}

    def stop_at_step_5() -> bool:
        calls["n"] += 1
        return calls["n"] == 5

    first = narrow_lora_model(seed=1, dropout=0.1)
    with pytest.raises(TrainingStopped) as stopped:
        fit(first, tokenizer, rows, config, callbacks=TrainCallbacks(stop=stop_at_step_5),
            checkpoint_store=store, checkpoint_prefix="runs/r1/checkpoints")
    assert stopped.value.step == 5 and stopped.value.checkpoint.endswith("step-00000005")

    # A fresh process: different adapter init and global RNG; everything must come from the checkpoint.
    torch.manual_seed(999)
    second = narrow_lora_model(seed=1, dropout=0.1, adapter_seed=2)
    resumed = fit(second, tokenizer, rows, config, checkpoint_store=store, checkpoint_prefix="runs/r1/checkpoints")
    assert resumed.resumed_from.endswith("step-00000005")
    assert resumed.steps == 8
    got = _adapter(second)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)
    assert resumed.loss_curve == pytest.approx(reference.loss_curve, rel=1e-4, abs=1e-5)
    # Without restoring RNG the dropout masks would differ: a different seed gives a different adapter.
    other = narrow_lora_model(seed=1, dropout=0.1)
    fit(other, tokenizer, rows, TrainConfig(**{**config.to_dict(), "seed": 6}))
    assert any(not torch.allclose(_adapter(other)[n], expected[n]) for n in expected)


def test_progress_callbacks_and_throughput(tokenizer):
    seen = []
    model = narrow_lora_model()
    result = fit(model, tokenizer, make_facts(16, seed=3), TrainConfig(epochs=2, batch_size=4, log_every=3),
                 callbacks=TrainCallbacks(progress=lambda *args: seen.append(args)))
    assert [s[0] for s in seen] == [3, 6, 8]
    assert all(total == 8 and loss > 0 and rate > 0 for _, total, loss, rate in seen)
    assert result.tokens_seen > 0 and result.useful_tokens_per_s > 0 and len(result.loss_curve) == 8


class PullToZero:
    """A toy regulariser: strength · Σ θ² over LoRA weights (stateful: counts its calls)."""

    name = "pull"
    needs_logits = False

    def __init__(self, strength: float):
        self.strength = strength
        self.calls = torch.zeros(())

    def loss(self, model, batch, outputs):
        self.calls += 1
        return self.strength * sum((p**2).sum() for p in trainable_parameters(model).values())

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"].clone()


def test_regulariser_penalty_changes_the_outcome_and_is_logged(tokenizer):
    rows = make_facts(16, seed=4)
    config = TrainConfig(learning_rate=3e-3, epochs=3, batch_size=4)
    plain, pulled = narrow_lora_model(seed=3), narrow_lora_model(seed=3)
    fit(plain, tokenizer, rows, config)
    reg = PullToZero(strength=1.0)
    result = fit(pulled, tokenizer, rows, config, regularizers=[reg])
    norm = lambda m: sum(p.norm() ** 2 for p in trainable_parameters(m).values())  # noqa: E731
    assert norm(pulled) < 0.9 * norm(plain)
    assert result.regularizer_means["pull"] > 0 and result.penalty_ratio["pull"] > 0
    assert int(reg.calls) == 12


def test_config_reports_every_problem_at_once(tokenizer):
    with pytest.raises(ConfigError) as info:
        TrainConfig(learning_rate=0, batch_size=0, schedule="zigzag", max_length=1)
    message = str(info.value)
    for field in ("learning_rate", "batch_size", "schedule", "max_length"):
        assert field in message
    with pytest.raises(ConfigError, match="no trainable parameters"):
        from workers.learning.tiny import build_tiny_model

        from .conftest import NARROW
        fit(build_tiny_model(0, **NARROW).requires_grad_(False), tokenizer, make_facts(2), TrainConfig())


def test_thumbs_down_suppression_stops_near_its_margin_below_the_base(tokenizer):
    """fit() pushes a disliked answer down until it is `suppression_margin` nats below the base
    model's log-prob, then stops; without the bound it keeps going."""
    from workers.learning.evaluation import EvalSettings, mean_response_logprob

    disliked = [dict(r, feedback="thumbs_down", unlikelihood=True) for r in make_facts(8, seed=6)]
    ev = EvalSettings(batch_size=8, max_length=256)
    # The random tiny model spreads its probability thinly (p ≈ 0.1), where -log(1 - p) pushes
    # gently: a small margin and a high learning rate keep this test short.
    config = TrainConfig(learning_rate=1e-2, epochs=30, batch_size=8, suppression_margin=0.4)
    bounded, unbounded = narrow_lora_model(seed=3), narrow_lora_model(seed=3)
    with bounded.disable_adapter():
        base = mean_response_logprob(bounded, tokenizer, disliked, ev)
    fit(bounded, tokenizer, disliked, config)
    fit(unbounded, tokenizer, disliked, TrainConfig(**{**config.__dict__, "suppression_margin": None}))
    drop_bounded = base - mean_response_logprob(bounded, tokenizer, disliked, ev)
    drop_unbounded = base - mean_response_logprob(unbounded, tokenizer, disliked, ev)
    # Adam's momentum carries a row a little past its floor after its gradient stops (measured 0.56).
    assert 0.35 < drop_bounded < 0.75 and drop_unbounded > 1.5 * drop_bounded, (drop_bounded, drop_unbounded)
    with pytest.raises(ConfigError, match="suppression_margin"):
        TrainConfig(suppression_margin=0.0)
