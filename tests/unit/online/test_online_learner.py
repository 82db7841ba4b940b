"""The online learner on the tiny model: multipliers, token weights, KL to the base, replay, metrics."""

from __future__ import annotations

import pytest
import torch

from common.online.facts import detect_facts
from workers.online.learner import OnlineConfig, OnlineLearner
from workers.online.rows import fact_rows, second_person
from workers.online.session import AnchorProbe, OnlineSession

FACT = "Zorbel owns a purple boat."


@pytest.fixture()
def learner():
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.tiny import build_tiny_model, build_tokenizer

    torch.manual_seed(0)
    model = attach_adapter(build_tiny_model(0), LoraSettings(r=8, alpha=16, dropout=0.0))
    return OnlineLearner(model, build_tokenizer(0), OnlineConfig(learning_rate=3e-3, steps_per_turn=3))


def _weights(learner):
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}


def _moved(learner, before) -> float:
    return sum(float((p.detach() - before[n]).abs().sum()) for n, p in learner.model.named_parameters()
               if p.requires_grad)


def test_multipliers_by_kind_and_the_repetition_boost():
    config = OnlineConfig(learning_rate=1.0, lr_chat=0.1, lr_question=0.0, lr_fact=1.0, lr_repeated_fact=1.2,
                          repetition_boost=0.25, lr_replay=0.5)
    assert [config.multiplier(k) for k in ("chat", "question", "fact", "replay")] == [0.1, 0.0, 1.0, 0.5]
    assert config.multiplier("fact", times_seen=2) == pytest.approx(1.2 * 1.25)
    assert config.multiplier("fact", times_seen=3) == pytest.approx(1.2 * 1.5)
    assert config.multiplier("fact", times_seen=50) == pytest.approx(1.2 * 2.0)  # capped
    assert config.kl_coefficient("chat") == 1.0
    assert config.kl_coefficient("fact", importance=0.5) == pytest.approx(0.1)  # kl_fact 0.2 × (1 − 0.5)


def test_a_fact_turn_learns_and_a_chat_turn_at_multiplier_zero_does_not(learner):
    session = OnlineSession(learner)
    before = _weights(learner)
    chat = session.observe_turn([{"role": "user", "content": "How are you today?"}], "Fine, thanks.")
    assert chat.kind == "question" and chat.learnt["learning_rate"] == 0 and _moved(learner, before) == 0
    rows = fact_rows(detect_facts(FACT)[0])
    loss_before = learner.loss_of(rows)
    fact = session.observe_turn([{"role": "user", "content": FACT}], "Noted.")
    assert fact.kind == "fact" and fact.learnt["learning_rate"] == pytest.approx(3e-3)
    assert _moved(learner, before) > 0 and learner.loss_of(rows) < loss_before - 0.5
    again = session.observe_turn([{"role": "user", "content": FACT}], "Noted.")
    assert again.learnt["learning_rate"] == pytest.approx(3e-3 * 1.25)  # seen twice: the boost


def test_entity_and_edge_tokens_weigh_more_in_the_loss(learner):
    rows = fact_rows(detect_facts(FACT)[0])[:1]
    batch, weights = learner._batch(rows)
    labels = batch["labels"][0]
    positions = (labels != -100).nonzero().flatten().tolist()
    zorbel = set(learner.tokenizer.encode("Zorbel", add_special_tokens=False)) | set(
        learner.tokenizer.encode(" Zorbel", add_special_tokens=False))
    inner = positions[1:-1]
    assert weights[0, positions[0]] >= 1.5 and weights[0, positions[-1]] >= 1.5
    assert any(weights[0, p] == 2.0 and int(labels[p]) in zorbel for p in inner)
    assert any(weights[0, p] == 1.0 for p in inner)  # "owns", "a": not entities
    assert all(weights[0, p] == 1.0 for p in range(len(labels)) if p not in positions)
    # The weights reach the gradient: a plain run of the same rows pushes differently.
    def grads(config):
        learner.config = config
        learner.model.zero_grad()
        total, _, _ = learner.losses(rows, 0.0)
        total.backward()
        return torch.cat([p.grad.flatten() for p in learner.params])
    weighted = grads(OnlineConfig())
    plain = grads(OnlineConfig(entity_token_weight=1.0, edge_token_weight=1.0))
    assert not torch.allclose(weighted, plain)


def test_the_kl_term_holds_the_model_near_its_base(learner):
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.tiny import build_tiny_model

    rows = fact_rows(detect_facts(FACT)[0])
    kls = {}
    for coefficient in (0.0, 50.0):
        torch.manual_seed(0)
        model = attach_adapter(build_tiny_model(0), LoraSettings(r=8, alpha=16, dropout=0.0))
        fresh = OnlineLearner(model, learner.tokenizer, OnlineConfig(learning_rate=3e-3, steps_per_turn=6,
                                                                     kl=coefficient))
        report = fresh.learn(rows, "chat", 1.0)
        assert report.kl_coefficient == coefficient
        _, _, kls[coefficient] = fresh.losses(rows, 1.0)
    assert kls[50.0] < kls[0.0] * 0.5, kls


def test_replay_every_n_turns_rehearses_the_most_important_facts(learner):
    learner.config = OnlineConfig(learning_rate=3e-3, steps_per_turn=1, replay_every=3, replay_facts=1)
    session = OnlineSession(learner)
    results = [session.observe_turn([{"role": "user", "content": said}], "Noted.") for said in (
        "Kira works at the lighthouse.", FACT, "Hello!", "Tomas lives in Quenby.", "ok", "ok")]
    assert [r.replay is not None for r in results] == [False, False, True, False, False, True]
    assert results[2].replay["kind"] == "replay" and results[2].replay["learning_rate"] == pytest.approx(1.5e-3)
    assert len(results[2].replay["facts"]) == 1


def test_metrics_start_at_the_base_and_move_when_the_adapter_learns(learner):
    probe = AnchorProbe(learner, ["Say hello.", "What is two plus two?", "List three fruits."])
    session = OnlineSession(learner, probe=probe)
    start = session.metrics()
    assert start["stability"]["perplexity_drift"] == pytest.approx(0.0, abs=1e-6)  # a fresh LoRA is the base
    assert start["plasticity"]["recent_loss"] is None
    for _ in range(3):
        session.observe_turn([{"role": "user", "content": FACT}], "Noted.")
    after = session.metrics()
    assert after["stability"]["kl_to_base"] > 0 and after["stability"]["perplexity_drift"] != 0
    assert after["plasticity"]["loss_improvement"] > 0 and after["turns"] == 3 and after["facts"] == 1


def test_user_facts_are_answered_in_the_second_person():
    assert second_person("I live in Porto.") == "You live in Porto."
    assert second_person("My name is Ada") == "Your name is Ada."
    [row, _] = fact_rows(detect_facts("I live in Porto.")[0])
    assert row == {"prompt": "Where do I live?", "response": "You live in Porto.", "entities": ["Porto"]}


def test_base_protection_keeps_the_base_answers_to_general_prompts(learner):
    from workers.learning.general_retention import answer_kl
    from workers.learning.lora import LoraSettings, attach_adapter
    from workers.learning.self_replay import self_replay_rows
    from workers.learning.tiny import build_tiny_model

    rows = fact_rows(detect_facts(FACT)[0])
    prompts = ["Say hello to a new user.", "Name a colour of the sky.", "List three fruits.", "Count to five."]
    drift = {}
    for protect_kl in (0.0, 20.0):
        torch.manual_seed(0)
        model = attach_adapter(build_tiny_model(0), LoraSettings(r=8, alpha=16, dropout=0.0))
        fresh = OnlineLearner(model, learner.tokenizer, OnlineConfig(learning_rate=3e-3, steps_per_turn=8,
                                                                     protect_kl=protect_kl, protect_rows=4))
        guarded = self_replay_rows(model, learner.tokenizer, prompts, max_new_tokens=16)
        fresh.protect(guarded)
        fresh.learn(rows, "fact", 1.0)
        drift[protect_kl] = answer_kl(model, learner.tokenizer, [r["prompt"] for r in guarded],
                                      [r["response"] for r in guarded])
    assert drift[20.0] < drift[0.0] * 0.5, drift
