"""The fact memory's policies: importance by repetition and recency, decay, removal, eviction."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.online.facts import DetectedFact
from common.online.memory import MemoryPolicy, fact_key, importance, observe, replay_choice


def _fact(subject: str, obj: str = "boat", confidence: float = 0.8) -> DetectedFact:
    return DetectedFact(f"{subject} owns a {obj}.", "owns", subject, obj, (subject, obj), confidence)


def test_the_same_fact_is_one_entry_and_repetition_raises_its_importance():
    memory: dict = {}
    policy = MemoryPolicy(importance="repetition")
    observe(memory, [_fact("Zorbel")], 1, policy)
    once = memory[fact_key("owns", "Zorbel", "boat")].importance
    observe(memory, [_fact("zorbel ")], 2, policy)  # the same fact, written differently
    assert len(memory) == 1
    fact = next(iter(memory.values()))
    assert fact.times_seen == 2 and fact.importance > once
    assert once == pytest.approx(0.8 * 0.5) and fact.importance == pytest.approx(0.8 * 0.75)


def test_recency_importance_halves_every_half_life():
    memory: dict = {}
    policy = MemoryPolicy(importance="recency", decay_after_turns=10)
    observe(memory, [_fact("Zorbel")], 0, policy)
    assert next(iter(memory.values())).importance == pytest.approx(0.8)
    observe(memory, [], 10, policy)  # not past N yet: recency only
    assert next(iter(memory.values())).importance == pytest.approx(0.4)


def test_facts_not_seen_for_n_turns_decay_and_go_below_the_threshold():
    memory: dict = {}
    policy = MemoryPolicy(importance="repetition", decay_after_turns=5, decay_factor=0.5, remove_below=0.05)
    observe(memory, [_fact("Zorbel"), _fact("Kira", "ferry")], 0, policy)
    observe(memory, [_fact("Kira", "ferry")], 7, policy)
    zorbel = memory[fact_key("owns", "Zorbel", "boat")]
    assert zorbel.importance == pytest.approx(0.8 * 0.5 * 0.5 ** 2)  # 7 - 5 = 2 turns of decay
    change = observe(memory, [_fact("Kira", "ferry")], 9, policy)  # 4 turns of decay: 0.025 < 0.05
    assert fact_key("owns", "Zorbel", "boat") in change.removed and len(memory) == 1


@pytest.mark.parametrize("eviction, gone", [
    ("fifo", "A"),        # first seen first
    ("lru", "B"),         # least recently seen (A was seen again at turn 3)
    ("importance", "C"),  # least important: the lowest confidence
    ("hybrid", "C"),
])
def test_eviction_policies_choose_who_goes_when_full(eviction, gone):
    memory: dict = {}
    policy = MemoryPolicy(capacity=3, eviction=eviction, importance="repetition")
    observe(memory, [_fact("A")], 1, policy)
    observe(memory, [_fact("B")], 2, policy)
    observe(memory, [_fact("A"), _fact("C", confidence=0.3)], 3, policy)
    change = observe(memory, [_fact("D")], 4, policy)
    assert change.removed == [fact_key("owns", gone, "boat")]
    assert len(memory) == 3


@pytest.mark.parametrize("eviction, gone", [("hybrid", "Old"), ("importance", "New")])
def test_hybrid_evicts_a_stale_fact_before_a_slightly_less_important_fresh_one(eviction, gone):
    memory: dict = {}
    policy = MemoryPolicy(capacity=2, eviction=eviction, importance="repetition", decay_after_turns=100)
    observe(memory, [_fact("Old", confidence=0.82)], 0, policy)
    observe(memory, [_fact("New", confidence=0.8)], 90, policy)
    change = observe(memory, [_fact("Newest", confidence=0.9)], 91, policy)
    assert change.removed == [fact_key("owns", gone, "boat")]


def test_replay_takes_the_most_important_facts():
    memory: dict = {}
    policy = MemoryPolicy(importance="repetition")
    observe(memory, [_fact("A", confidence=0.5)], 1, policy)
    observe(memory, [_fact("B", confidence=0.9)], 2, policy)
    observe(memory, [_fact("C", confidence=0.7)], 3, policy)
    assert [f.subject for f in replay_choice(memory, 2)] == ["B", "C"]


def test_a_bad_policy_names_every_problem():
    with pytest.raises(ConfigError) as refused:
        MemoryPolicy(capacity=0, eviction="random", decay_factor=2)  # type: ignore[arg-type]
    for problem in ("capacity", "eviction", "decay_factor"):
        assert problem in str(refused.value)
