"""Replay: proportional, deterministic per seed, a fresh draw each epoch, bounded memory, streams shards,
reads history once per cycle (not once per epoch), and never replays a probe or holdout row.

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- history re-read every epoch (the old per-epoch reservoir; or prepare_cycle not passing `epochs`):
  test_history_is_read_from_the_store_once_per_cycle, test_a_fit_reads_history_once_for_all_epochs
- replay drawing every split (`store_history(split=None)`): test_probe_and_holdout_rows_are_never_replayed
- the train job reading only the `train` split of its new dataset (or every split):
  test_probe_and_holdout_rows_are_never_replayed
- the reservoir sized for one epoch and reused: test_epochs_get_disjoint_draws_from_one_pass
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections import Counter

from common.objectstore.local import LocalObjectStore
from workers.learning.replay import ReplayMixer, in_memory_history, replay_count, reservoir_sample, store_history


def rows(prefix: str, n: int) -> list[dict]:
    return [{"prompt": f"{prefix}{i}?", "response": f"{prefix}{i}", "messages": None, "weight": 1.0,
             "feedback": "thumbs_up", "unlikelihood": False} for i in range(n)]


def test_replay_is_the_configured_share_of_every_epoch():
    new = rows("new", 80)
    mixer = ReplayMixer(new, in_memory_history(rows("a", 100), rows("b", 100)), share=0.2, seed=1)
    for epoch in range(3):
        epoch_rows = mixer(epoch)
        replayed = [r for r in epoch_rows if not r["prompt"].startswith("new")]
        assert len(epoch_rows) == 100 and len(replayed) == 20 == replay_count(80, 0.2)
        assert sum(r["prompt"].startswith("new") for r in epoch_rows) == 80


def test_draws_are_deterministic_per_seed_and_fresh_per_epoch():
    history = in_memory_history(rows("a", 300))
    first = ReplayMixer(rows("new", 40), history, share=0.2, seed=7)
    again = ReplayMixer(rows("new", 40), history, share=0.2, seed=7)
    other = ReplayMixer(rows("new", 40), history, share=0.2, seed=8)
    assert first(0) == again(0) and first(3) == again(3)
    assert first.replayed(0) != first.replayed(1)
    assert first.replayed(0) != other.replayed(0)


def test_every_earlier_row_is_drawn_uniformly_over_epochs():
    history = in_memory_history(rows("a", 60), rows("b", 20))  # datasets weigh by their size
    for epochs in (1, 400):  # a pass per epoch, or one pass for all 400 (history smaller than the draws)
        mixer = ReplayMixer(rows("new", 40), history, share=0.2, seed=0, epochs=epochs)
        counts = Counter(r["prompt"] for epoch in range(400) for r in mixer.replayed(epoch))
        assert len(counts) == 80  # all of history is visited, not a fixed buffer
        per_row = 400 * 10 / 80
        assert all(0.6 * per_row < c < 1.4 * per_row for c in counts.values())
        share_b = sum(c for k, c in counts.items() if k.startswith("b")) / sum(counts.values())
        assert abs(share_b - 0.25) < 0.03


def test_epochs_get_disjoint_draws_from_one_pass():
    """History larger than all draws: one reservoir of count × epochs rows, cut into disjoint epochs."""
    calls = []

    def history():
        calls.append(1)
        return [rows("a", 500)]

    mixer = ReplayMixer(rows("new", 40), history, share=0.2, seed=3, epochs=8)
    draws = [[r["prompt"] for r in mixer.replayed(e)] for e in range(8)]
    assert all(len(d) == mixer.count == 10 for d in draws) and mixer.capacity == 80
    assert len({p for d in draws for p in d}) == 80  # no row twice in one cycle
    assert len(calls) == 1
    assert draws == [[r["prompt"] for r in mixer.replayed(e)] for e in range(8)]  # a pure function of epoch
    again = ReplayMixer(rows("new", 40), history, share=0.2, seed=3, epochs=8)
    assert [r["prompt"] for r in again.replayed(5)] == draws[5]  # a resumed run redraws the same epoch
    mixer.replayed(8)  # past the planned epochs (fit with max_steps): a second pass, not an error
    assert len(calls) == 3  # `again` made one pass, epoch 8 one more
    capped = ReplayMixer(rows("new", 40), history, share=0.2, seed=3, epochs=8, max_rows=30)
    held = {p for e in range(8) for p in (r["prompt"] for r in capped.replayed(e))}
    assert capped.capacity == 30 and len(held) == 30 and len(calls) == 4  # at most 30 held, still one pass


def test_one_cycle_holds_at_most_its_draws_not_the_history():
    def stream(n):
        for i in range(n):
            yield {"prompt": f"q{i}" * 20, "response": "x" * 200}

    mixer = ReplayMixer(rows("new", 40), lambda: [stream(40_000)], share=0.2, seed=0, epochs=4)
    tracemalloc.start()
    mixer.replayed(0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert mixer.capacity == 40
    assert peak < 40_000 * 300 / 50  # bytes the history would take if loaded


def test_sampling_memory_is_bounded_by_the_draw_not_the_history():
    def stream(n):
        for i in range(n):
            yield {"prompt": f"q{i}" * 20, "response": "x" * 200}

    import random

    tracemalloc.start()
    sample = reservoir_sample(stream(40_000), 16, random.Random(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(sample) == 16
    held_all = 40_000 * 300  # ≥ bytes the history would take if loaded
    assert peak < held_all / 50


class CountingStore(LocalObjectStore):
    """A real local object store that counts how often objects are opened for reading."""

    def __init__(self, root):
        super().__init__(root)
        self.reads: Counter = Counter()

    def open_read(self, key):
        self.reads[key] += 1
        return super().open_read(key)

    def get_bytes(self, key):
        self.reads[key] += 1
        return super().get_bytes(key)


def publish(store, tmp_path, prefix, records):
    from common.objectstore.artifacts import publish_artifact
    from workers.export.shard import SCHEMA_VERSION

    shard = tmp_path / f"{prefix.replace('/', '_')}.jsonl.gz"
    shard.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
    publish_artifact(store, prefix, {"shard.jsonl.gz": shard},
                     {"schema_version": SCHEMA_VERSION, "shard": "shard.jsonl.gz"})


def _shard_reads(store) -> int:
    return sum(n for key, n in store.reads.items() if key.endswith("shard.jsonl.gz"))


def test_history_is_read_from_the_store_once_per_cycle(tmp_path):
    store = CountingStore(tmp_path / "store")
    publish(store, tmp_path, "datasets/d1", [dict(r, split="train") for r in rows("a", 30)])
    publish(store, tmp_path, "datasets/d2", [dict(r, split="train") for r in rows("b", 30)])
    mixer = ReplayMixer(rows("new", 16), store_history(store, ["datasets/d1", "datasets/d2"]), share=0.2, seed=0,
                        epochs=40)
    replayed = [mixer(epoch) for epoch in range(40)]
    assert all(len(r) == 20 for r in replayed)
    assert _shard_reads(store) == 2  # each earlier dataset streamed once, not 40 times


def test_a_fit_reads_history_once_for_all_epochs(tokenizer, fact_sets):
    from tests.unit.learning_keep.conftest import make_lora_model
    from workers.learning.continual import prepare_cycle, recipe
    from workers.learning.training import TrainConfig, fit

    calls = []

    def history():
        calls.append(1)
        return [list(fact_sets[0])]

    config = TrainConfig(learning_rate=1e-3, epochs=3, batch_size=8, seed=0)
    plan = prepare_cycle(make_lora_model(), fact_sets[1][:8], recipe("replay", replay_share=0.5), history=history,
                         epochs=config.epochs)
    result = fit(make_lora_model(), tokenizer, plan.rows, config)
    assert result.steps == 3 * 2 and len(calls) == 1  # 16 rows per epoch (8 new + 8 replayed), one read


def test_probe_and_holdout_rows_are_never_replayed(tmp_path):
    store = CountingStore(tmp_path / "store")
    records = ([dict(r, split="train") for r in rows("t", 6)] + [dict(r, split="probe") for r in rows("p", 6)]
               + [dict(r, split="holdout") for r in rows("h", 6)])
    publish(store, tmp_path, "datasets/d1", records)
    mixer = ReplayMixer(rows("new", 40), store_history(store, ["datasets/d1"]), share=0.5, seed=0, epochs=30)
    seen = Counter(r["prompt"][0] for epoch in range(30) for r in mixer.replayed(epoch))
    assert set(seen) == {"t"} and sum(seen.values()) == 30 * 40
    # ...while the cycle that owns the dataset trains on its train and probe rows, never its holdout
    from workers.train.logic import taught_rows

    assert Counter(r["prompt"][0] for r in taught_rows(store, ["datasets/d1"])) == {"t": 6, "p": 6}


def test_history_streams_train_rows_of_exported_datasets(tmp_path):
    store = LocalObjectStore(tmp_path / "store")

    publish(store, tmp_path, "datasets/d1", [dict(r, split="train") for r in rows("a", 5)] + [dict(r, split="holdout") for r in rows("h", 3)])
    publish(store, tmp_path, "datasets/d2", [{"prompt": "p", "response": "r", "split": "train"}] + [dict(r, split="train") for r in rows("c", 2)])
    history = store_history(store, ["datasets/d1", "datasets/d2/manifest.json"])
    streamed = [r for dataset in history() for r in dataset]
    assert [r["prompt"] for r in streamed] == ["a0?", "a1?", "a2?", "a3?", "a4?", "p", "c0?", "c1?"]
    assert streamed[5]["weight"] == 1.0 and streamed[5]["unlikelihood"] is False  # defaults filled in
    mixer = ReplayMixer(rows("new", 16), history, share=0.2, seed=0)
    assert len(mixer.replayed(0)) == 4
