"""Replay: mix a share of rows from earlier datasets into every epoch, in bounded memory.

History can be any number of earlier datasets, so it is never loaded whole. Each epoch the sampler
streams history once and keeps a uniform reservoir (Algorithm R) of exactly the rows it needs, seeded
by (seed, epoch): memory is O(replayed rows), the draw is reproducible, and a new draw every epoch
visits all of history over a run. (A fixed small buffer does not do that, and measured much worse:
see bench/forgetting.py.)

The sampler takes a *factory* of an iterable of iterables of rows (one per earlier dataset), so it does
not care where rows come from; `store_history` builds one over exported datasets in the object store.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from common.errors import ValidationError

Row = dict[str, Any]
HistoryFactory = Callable[[], Iterable[Iterable[Row]]]


def reservoir_sample(rows: Iterable[Row], k: int, rng: random.Random) -> list[Row]:
    """A uniform sample of `k` rows from a stream of unknown length, holding at most `k` rows."""
    reservoir: list[Row] = []
    for seen, row in enumerate(rows):
        if seen < k:
            reservoir.append(row)
        else:
            slot = rng.randint(0, seen)
            if slot < k:
                reservoir[slot] = row
    return reservoir


def replay_count(new_rows: int, share: float) -> int:
    """How many replayed rows make them `share` of an epoch that also holds `new_rows` new rows."""
    if not 0.0 <= share < 1.0:
        raise ValidationError(f"replay share must be in [0, 1), got {share}")
    return round(new_rows * share / (1.0 - share))


class ReplayMixer:
    """Per-epoch rows for `training.fit`: the new rows plus a fresh replay draw from history.

    Use an instance as ``rows`` for fit (it is a callable ``epoch -> list``). Rows come back shuffled
    with a seeded order so replayed rows are spread over the epoch, not bunched at the end.
    """

    def __init__(self, new_rows: list[Row], history: HistoryFactory, share: float, seed: int = 0):
        self.new_rows = list(new_rows)
        self.history = history
        self.share = share
        self.seed = seed
        self.count = replay_count(len(self.new_rows), share)

    def replayed(self, epoch: int) -> list[Row]:
        """This epoch's replay draw (deterministic in seed and epoch)."""
        if self.count == 0:
            return []
        rng = random.Random(f"replay:{self.seed}:{epoch}")
        return reservoir_sample(_chain(self.history()), self.count, rng)

    def __call__(self, epoch: int) -> list[Row]:
        rows = self.new_rows + self.replayed(epoch)
        random.Random(f"order:{self.seed}:{epoch}").shuffle(rows)
        return rows


def _chain(datasets: Iterable[Iterable[Row]]) -> Iterator[Row]:
    for dataset in datasets:
        yield from dataset


def in_memory_history(*datasets: list[Row]) -> HistoryFactory:
    """History from lists already in memory (tests, small experiments)."""
    return lambda: [list(d) for d in datasets]


def _as_training_row(row: Row) -> Row:
    """An exported row with the fields training reads filled in (older exports may lack some)."""
    out = dict(row)
    out.setdefault("messages", None)
    out.setdefault("weight", 1.0)
    out.setdefault("feedback", "thumbs_up")
    out.setdefault("unlikelihood", False)
    return out


def store_history(store: Any, dataset_refs: list[str], split: str | None = "train") -> HistoryFactory:
    """History over exported datasets in the object store (each a prefix, manifest key or URI).

    Rows are streamed with the export's own reader (`workers.export.shard.iter_dataset_rows`, which
    checks the shard against its manifest hash), one dataset after another, every time it is called.
    """
    from workers.export.shard import iter_dataset_rows

    def datasets() -> Iterator[Iterable[Row]]:
        for ref in dataset_refs:
            yield (_as_training_row(row) for row in iter_dataset_rows(store, ref, split))

    return datasets

