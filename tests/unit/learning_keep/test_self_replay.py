"""Self-replay (base protection from the first cycle): mixed into every epoch, on from cycle 1, cached."""

from __future__ import annotations

from common.objectstore.local import LocalObjectStore
from tests.unit.learning_keep.conftest import make_lora_model
from workers.learning.continual import ContinualConfig, prepare_cycle
from workers.learning.replay import in_memory_history
from workers.learning.self_replay import SelfReplayMixer, cached_self_replay_rows


def _own(n: int) -> list[dict]:
    return [{"prompt": f"general {i}?", "response": f"answer {i}.", "self_replay": True} for i in range(n)]


def test_first_cycle_mixes_the_share_of_base_rows(fact_sets):
    new = fact_sets[0][:12]
    plan = prepare_cycle(None, new, ContinualConfig(self_replay_share=0.5), base_rows=_own(40))
    epoch = plan.rows(0)
    assert sum(1 for r in epoch if r.get("self_replay")) == 12  # 0.5 of the epoch: as many as the new rows
    assert [r for r in epoch if not r.get("self_replay")] != new  # shuffled in, not appended
    assert sorted(r["prompt"] for r in epoch if not r.get("self_replay")) == sorted(r["prompt"] for r in new)
    assert plan.rows(0) == epoch and plan.rows(1) != epoch  # pure in the epoch (resume), fresh per epoch
    assert not plan.notes


def test_self_replay_stacks_on_history_replay_and_says_when_missing(fact_sets):
    new, old = fact_sets[0][:8], fact_sets[1]
    config = ContinualConfig(replay_share=0.2, self_replay_share=0.5)
    rows = prepare_cycle(None, new, config, history=in_memory_history(old), base_rows=_own(20)).rows(0)
    old_prompts = {r["prompt"] for r in old}
    assert sum(r["prompt"] in old_prompts for r in rows) == 2 and sum(bool(r.get("self_replay")) for r in rows) == 8
    plan = prepare_cycle(None, new, ContinualConfig(self_replay_share=0.5))
    assert plan.rows == list(new) and any("self-replay off" in n for n in plan.notes)


def test_mixer_draws_at_most_the_pool():
    mixer = SelfReplayMixer([{"prompt": "x", "response": "y"}] * 30, 30, _own(5), 0.5)
    assert len(mixer(0)) == 35


def test_rows_are_cached_per_base_model(tmp_path, tokenizer, fact_sets):
    store = LocalObjectStore(tmp_path)
    model = make_lora_model()
    prompts = [r["prompt"] for r in fact_sets[0][:4]]
    first = cached_self_replay_rows(store, "base-a", model, tokenizer, prompts, max_new_tokens=4)
    assert len(list(store.list("self_replay/"))) == 1
    # A second call reads the stored rows: here a poisoned copy proves nothing was regenerated.
    key = next(iter(store.list("self_replay/")))
    store.put_bytes(key, b'[{"prompt": "p", "response": "stored"}]')
    assert cached_self_replay_rows(store, "base-a", model, tokenizer, prompts, max_new_tokens=4)[0]["response"] == "stored"
    cached_self_replay_rows(store, "base-b", model, tokenizer, prompts, max_new_tokens=4)
    assert len(list(store.list("self_replay/"))) == 2  # another base model: its own rows
    assert isinstance(first, list)
