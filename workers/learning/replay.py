"""Replay: mix a share of rows from earlier datasets into every epoch, in bounded memory.

History can be any number of earlier datasets, so it is never loaded whole, and it is read **once
per cycle**, not once per epoch (a 40-epoch cycle used to stream all of history from the object store
40 times). One pass keeps a uniform reservoir (Algorithm R) sized for every epoch's draws together
(``per-epoch count × epochs`` rows), seeded by the mixer's seed; the reservoir is shuffled once and
cut into one disjoint slice per epoch. So memory is O(rows replayed in the whole cycle), capped by
`max_rows`, never O(history); each epoch still gets a different draw, and the cycle as a whole sees as
much of history as it can replay (a sample without replacement: better coverage than independent
per-epoch draws).
When history is smaller than all the draws, the reservoir holds all of it and the epochs cycle through
fresh shuffles of it, each row replayed equally often. (A fixed small buffer measured much worse:
see bench/forgetting.py.) An epoch past the planned count (``fit`` with ``max_steps``) starts another
pass with its own seed, so `rows(epoch)` stays a pure function of the epoch, as an exact resume needs.

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
    """Per-epoch rows for `training.fit`: the new rows plus this epoch's replay draw from history.

    Use an instance as ``rows`` for fit (it is a callable ``epoch -> list``). `epochs` is how many
    epochs the cycle runs: history is streamed once for all of them (see the module docstring), and
    `max_rows` caps the rows held whatever the epoch count and dataset sizes. Rows
    come back shuffled with a seeded order so replayed rows are spread over the epoch.
    """

    def __init__(self, new_rows: list[Row], history: HistoryFactory, share: float, seed: int = 0,
                 epochs: int = 1, max_rows: int = 100_000):
        if epochs < 1:
            raise ValidationError(f"replay needs epochs >= 1, got {epochs}")
        self.new_rows = list(new_rows)
        self.history = history
        self.share = share
        self.seed = seed
        self.epochs = epochs
        self.max_rows = max_rows
        self.count = replay_count(len(self.new_rows), share)
        self._pass: tuple[int, list[Row]] | None = None  # (pass index, its reservoir): one held at a time

    @property
    def capacity(self) -> int:
        """The most history rows held at once: one reservoir for every epoch's draw, at most `max_rows`
        (past that, epochs cycle through shuffles of the reservoir, as with a small history)."""
        return min(self.count * self.epochs, self.max_rows)

    def _reservoir(self, pass_index: int) -> list[Row]:
        if self._pass is None or self._pass[0] != pass_index:
            rng = random.Random(f"replay:{self.seed}:{pass_index}")
            pool = reservoir_sample(_chain(self.history()), self.capacity, rng)
            self._pass = (pass_index, pool)
        return self._pass[1]

    def replayed(self, epoch: int) -> list[Row]:
        """This epoch's replay draw (deterministic in seed and epoch)."""
        if self.count == 0:
            return []
        pass_index, slot = divmod(epoch, self.epochs)
        pool = self._reservoir(pass_index)
        if not pool:
            return []
        # The replay sequence of a pass: seeded shuffles of the pool, one after another; epoch `slot`
        # takes positions [slot·count, (slot+1)·count). A full pool needs only the first shuffle.
        drawn: list[Row] = []
        position = slot * self.count
        while len(drawn) < self.count:
            lap, offset = divmod(position, len(pool))
            order = list(range(len(pool)))
            random.Random(f"replay-order:{self.seed}:{pass_index}:{lap}").shuffle(order)
            take = order[offset : offset + self.count - len(drawn)]
            drawn.extend(pool[i] for i in take)
            position += len(take)
        return drawn

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

