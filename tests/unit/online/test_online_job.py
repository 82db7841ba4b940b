"""The `online` job on the tiny model with a real SQLite ledger and object-store folder: pending turns
applied in order, the fact memory kept, the state continued by the next job, a crash between the
checkpoint and the marks recovered without learning twice, and the lineage lock respected."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from common.db import session_scope
from common.db.models import FactMemory, OnlineTurn
from common.errors import RetryableError
from common.ledger.lineage_lock import holder_of, try_acquire
from common.online.store import add_turn
from tests.unit.learning_keep.cycles import make_cycles
from workers.learning.checkpoints import latest_checkpoint, load_checkpoint
from workers.online import job as online_job

FACTS = ["Zorbel owns a purple boat.", "How are you?", "Kira works at the lighthouse.", "Hello!",
         "Zorbel owns a purple boat."]


@pytest.fixture()
def cycles(tmp_path, migrated_sqlite_url):
    made = make_cycles(tmp_path, migrated_sqlite_url, online_steps_per_turn=1, lora_rank=4, lora_alpha=8)
    yield made
    made.close()


def _say(cycles, *lines: str) -> list[int]:
    return [add_turn(cycles.sessions, "default", [{"role": "user", "content": line}], "Noted.") for line in lines]


def _run(cycles, **params):
    return online_job.run(cycles.context(params))


def test_turns_are_applied_in_order_and_the_next_job_continues_the_state(cycles):
    ids = _say(cycles, *FACTS)
    first = _run(cycles)
    assert first["status"] == "applied" and first["turns_applied"] == 5 and first["turn_clock"] == 5
    assert first["kinds"] == {"fact": 3, "question": 1, "chat": 1} and first["facts"] == 2
    assert set(first["metrics"]) >= {"stability", "plasticity", "forgetting"}
    with session_scope(cycles.sessions) as session:
        turns = session.scalars(select(OnlineTurn).order_by(OnlineTurn.id)).all()
        assert [t.turn_number for t in turns] == [1, 2, 3, 4, 5] and [t.id for t in turns] == ids
        facts = {f.subject: f for f in session.scalars(select(FactMemory)).all()}
        assert set(facts) == {"Zorbel", "Kira"} and facts["Zorbel"].times_seen == 2
    assert _run(cycles)["status"] == "skipped"  # nothing pending: a duplicate job is harmless
    state = load_checkpoint(cycles.store, latest_checkpoint(cycles.store, online_job.state_prefix("default")))
    _say(cycles, "Tomas lives in Quenby.")
    second = _run(cycles)
    assert second["turns_applied"] == 1 and second["turn_clock"] == 6 and second["facts"] == 3
    after = load_checkpoint(cycles.store, latest_checkpoint(cycles.store, online_job.state_prefix("default")))
    # The optimizer's moments carried over (its step count grew), and the adapter moved on from there.
    step = lambda s: max(int(v["step"]) for v in s.optimizer["state"].values())  # noqa: E731
    assert step(after) == step(state) + 1
    assert any(not (after.adapter[n] == state.adapter[n]).all() for n in state.adapter)


def test_a_job_that_died_after_its_checkpoint_does_not_learn_its_turns_twice(cycles):
    _say(cycles, *FACTS[:3])
    _run(cycles)
    with session_scope(cycles.sessions) as session:  # as if the marking transaction never committed
        for turn in session.scalars(select(OnlineTurn)).all():
            turn.applied_at = None
    again = _run(cycles)
    assert again["turns_applied"] == 0 and again["turns_recovered"] == 3 and again["turn_clock"] == 3
    with session_scope(cycles.sessions) as session:
        assert all(t.applied_at is not None for t in session.scalars(select(OnlineTurn)).all())


def test_the_lineage_lock_keeps_a_batch_cycle_and_the_online_learner_apart(cycles, monkeypatch):
    _say(cycles, FACTS[0])
    assert try_acquire(cycles.sessions, "default", "train:job-1", ttl_seconds=60)
    assert not try_acquire(cycles.sessions, "default", "online:x", ttl_seconds=60)
    monkeypatch.setattr(online_job, "LOCK_WAIT_SECONDS", 0.5)
    with pytest.raises(RetryableError, match="busy .*train:job-1"):
        _run(cycles)
    with session_scope(cycles.sessions) as session:  # nothing was applied
        assert session.scalars(select(OnlineTurn)).one().applied_at is None
    assert try_acquire(cycles.sessions, "default", "train:job-1", ttl_seconds=-1)  # renewed, already expired
    assert holder_of(cycles.sessions, "default") is None  # an expired hold is free
    assert _run(cycles)["turns_applied"] == 1
    assert holder_of(cycles.sessions, "default") is None  # given back at the end


def test_the_fact_table_mirrors_the_memory_when_facts_are_evicted(tmp_path, migrated_sqlite_url):
    made = make_cycles(tmp_path, migrated_sqlite_url, online_steps_per_turn=1, lora_rank=4, lora_alpha=8,
                       online_memory_capacity=1, online_memory_eviction="fifo")
    try:
        _say(made, "Zorbel owns a purple boat.")
        _run(made)
        _say(made, "Kira works at the lighthouse.")
        assert _run(made)["facts"] == 1
        with session_scope(made.sessions) as session:
            assert [f.subject for f in session.scalars(select(FactMemory)).all()] == ["Kira"]
    finally:
        made.close()
