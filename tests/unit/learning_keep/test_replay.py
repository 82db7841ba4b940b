"""Replay: proportional, deterministic per seed, a fresh draw each epoch, bounded memory, streams shards."""

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
    mixer = ReplayMixer(rows("new", 40), history, share=0.2, seed=0)
    counts = Counter(r["prompt"] for epoch in range(400) for r in mixer.replayed(epoch))
    assert len(counts) == 80  # all of history is visited, not a fixed buffer
    per_row = 400 * 10 / 80
    assert all(0.6 * per_row < c < 1.4 * per_row for c in counts.values())
    share_b = sum(c for k, c in counts.items() if k.startswith("b")) / sum(counts.values())
    assert abs(share_b - 0.25) < 0.03


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


def test_history_streams_train_rows_of_exported_datasets(tmp_path):
    from common.objectstore.artifacts import publish_artifact
    from workers.export.shard import SCHEMA_VERSION

    store = LocalObjectStore(tmp_path / "store")

    def publish(prefix, records):
        shard = tmp_path / f"{prefix.replace('/', '_')}.jsonl.gz"
        shard.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
        publish_artifact(store, prefix, {"shard.jsonl.gz": shard},
                         {"schema_version": SCHEMA_VERSION, "shard": "shard.jsonl.gz"})

    publish("datasets/d1", [dict(r, split="train") for r in rows("a", 5)] + [dict(r, split="holdout") for r in rows("h", 3)])
    publish("datasets/d2", [{"prompt": "p", "response": "r", "split": "train"}] + [dict(r, split="train") for r in rows("c", 2)])
    history = store_history(store, ["datasets/d1", "datasets/d2/manifest.json"])
    streamed = [r for dataset in history() for r in dataset]
    assert [r["prompt"] for r in streamed] == ["a0?", "a1?", "a2?", "a3?", "a4?", "p", "c0?", "c1?"]
    assert streamed[5]["weight"] == 1.0 and streamed[5]["unlikelihood"] is False  # defaults filled in
    mixer = ReplayMixer(rows("new", 16), history, share=0.2, seed=0)
    assert len(mixer.replayed(0)) == 4
