"""After `continuum rollback`, the next cycle from the restored version re-learns the datasets the
rolled-back version(s) had been taught (or, with CONTINUUM_RETEACH_AFTER_ROLLBACK=false, says it does
not), instead of silently losing them. Lineage lookups on ledger rows, then the real train job.

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- `lost_to_rollback` returning nothing (the old behaviour: rolled-back datasets silently dropped):
  test_rolled_back_datasets_are_found_once_and_only_while_lost, test_the_next_cycle_reteaches_...
- re-taught datasets left out of the new adapter's `dataset_ids` (re-taught again every cycle):
  test_the_next_cycle_reteaches_what_the_rollback_dropped (the follow-up lookup)
- the setting ignored: test_the_next_cycle_reteaches_what_the_rollback_dropped (the `false` run)
"""

from __future__ import annotations

import pytest

from common.db.engine import session_scope
from common.db.models import Adapter
from tests.unit.learning_keep.cycles import make_cycles
from workers.lineage import lost_to_rollback
from workers.promote.aliases import move_alias, read_alias, rollback


@pytest.fixture
def cycles(tmp_path, migrated_sqlite_url):
    made = make_cycles(tmp_path, migrated_sqlite_url)
    yield made
    made.close()


def _promote(cycles, adapter_id: int) -> None:
    revision = read_alias(cycles.sessions, "production").revision
    assert move_alias(cycles.sessions, "production", adapter_id, revision).succeeded


def _adapter_row(cycles, version: int, parent: int | None, datasets: list[int], name: str = "default") -> int:
    with session_scope(cycles.sessions) as session:
        row = Adapter(name=name, version=version, parent_id=parent, base_model="builtin:tiny", uri=f"u{version}",
                      dataset_ids=datasets, metadata_={})
        session.add(row)
        session.flush()
        return row.id


def _lost(cycles, adapter_id: int | None) -> tuple[list[int], list[int]]:
    with session_scope(cycles.sessions) as session:
        parent = session.get(Adapter, adapter_id) if adapter_id is not None else None
        ids, versions = lost_to_rollback(session, parent)
        return ids, [v.version for v in versions]


def test_rolled_back_datasets_are_found_once_and_only_while_lost(cycles):
    d1, d2, d3, d4 = 11, 12, 13, 14  # dataset ids (the lookups read only adapter rows)
    v1 = _adapter_row(cycles, 1, None, [d1])
    v2 = _adapter_row(cycles, 2, v1, [d2])
    v3 = _adapter_row(cycles, 3, v2, [d3])
    _adapter_row(cycles, 9, None, [99], name="other")  # another lineage never counts
    for v in (v1, v2, v3):
        _promote(cycles, v)
    assert _lost(cycles, v2) == ([], [])  # no rollback yet: nothing is lost
    rejected = _adapter_row(cycles, 4, v2, [d4])  # a candidate the gate never promoted is not a rollback
    assert rollback(cycles.sessions, "production").succeeded
    assert read_alias(cycles.sessions, "production").adapter_id == v2
    assert _lost(cycles, v2) == ([d3], [3])
    assert _lost(cycles, v1) == ([d2, d3], [3])  # restored further back: both later datasets
    assert _lost(cycles, None) == ([], [])  # a fresh adapter starts over by request
    # The cycle that re-taught d3 lists it: from there on nothing is lost (no re-teach loop).
    v5 = _adapter_row(cycles, 5, v2, [d3, 15])
    assert _lost(cycles, v5) == ([], [])
    # Rolling forward to v3 again: its own ancestry has d3.
    _promote(cycles, v3)
    assert _lost(cycles, v3) == ([], [])
    # A second rollback, from v5 back to v2, loses v5's datasets too (d3 once).
    _promote(cycles, v5)
    assert rollback(cycles.sessions, "production", to_adapter_id=v2).succeeded
    assert _lost(cycles, v2) == ([d3, 15], [3, 5])
    assert rejected


def test_the_next_cycle_reteaches_what_the_rollback_dropped(cycles):
    d1, d2, d3, d4 = (cycles.dataset(n, {"train": 8, "probe": 2, "holdout": 2}) for n in ("d1", "d2", "d3", "d4"))
    versions = [cycles.train(d)["adapter_id"] for d in (d1, d2, d3)]
    for v in versions:
        _promote(cycles, v)
    assert rollback(cycles.sessions, "production").succeeded  # v3 → v2: d3 is no longer in production

    again = cycles.train(d4)  # continues production (v2)
    adapter = cycles.adapter(again["adapter_id"])
    assert adapter.parent_id == versions[1]
    assert again["retaught_dataset_ids"] == [d3] and adapter.dataset_ids == [d3, d4]
    assert any(f"re-teaching datasets [{d3}]" in n and "v3" in n for n in again["notes"])
    assert adapter.metadata_["notes"] == again["notes"]
    with session_scope(cycles.sessions) as session:  # the re-taught dataset is in the lineage again
        assert lost_to_rollback(session, session.get(Adapter, adapter.id)) == ([], [])

    off = cycles.train(d4, settings={"reteach_after_rollback": False})  # from v2 again (production)
    skipped = cycles.adapter(off["adapter_id"])
    assert off["retaught_dataset_ids"] == [] and skipped.dataset_ids == [d4]
    assert any(f"datasets [{d3}]" in n and "NOT re-taught" in n for n in off["notes"])
    # The re-teaching cycle trained on d3's taught rows (train + probe) as well as d4's.
    tokens = adapter.metadata_["train"]["tokens_seen"], skipped.metadata_["train"]["tokens_seen"]
    assert tokens[0] > 1.8 * tokens[1]
