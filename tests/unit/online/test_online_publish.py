"""Online versions (`workers/online/publish.py`) on the tiny model with a real SQLite ledger and
object-store folder: a version every N learnt turns, its dataset (taught wordings as probe, an unseen
wording as holdout), the run that starts at evaluate, the real evaluate and promote jobs on it, and
the state's restart when the gate refuses; the time rule; a publication lost in a crash is undone."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from common.db import session_scope
from common.db.models import Adapter, Dataset, OnlineTurn, PipelineRun
from common.online.store import add_turn, lineages_maybe_unpublished
from tests.unit.learning_keep.cycles import make_cycles
from workers.export.shard import iter_dataset_rows
from workers.learning.checkpoints import latest_checkpoint, load_checkpoint
from workers.lineage import alias_target
from workers.online import job as online_job
from workers.online.publish import PublishClock, restart_reason

FACTS = ["Zorbel owns a purple boat.", "Kira works at the lighthouse.", "How are you?", "Tomas lives in Quenby."]
MORE = ["Ilsa was born in Varnholm.", "Hello!", "Brenn owns a copper kettle.", "Odo works at the mill."]


@pytest.fixture()
def cycles(tmp_path, migrated_sqlite_url, monkeypatch):
    made = make_cycles(tmp_path, migrated_sqlite_url, online_steps_per_turn=1, lora_rank=4, lora_alpha=8,
                       online_publish_every=3, online_publish_seconds=0)
    sent: list[str] = []
    # No broker in a unit test: record the send (the e2e test sends it through a real worker).
    monkeypatch.setattr(online_job, "_send_evaluate", lambda ctx, run_id: sent.append(run_id))
    made.sent = sent
    yield made
    made.close()


def _say(cycles, *lines: str) -> None:
    for line in lines:
        add_turn(cycles.sessions, "default", [{"role": "user", "content": line}], "Noted.")


def _evaluate_and_promote(cycles, run_id: str, **gate) -> dict:
    from workers.evaluate.logic import run as evaluate
    from workers.promote.logic import run as promote

    with session_scope(cycles.sessions) as session:
        params = dict(session.get(PipelineRun, run_id).params["steps"]["evaluate"])
    evaluated = evaluate(cycles.context({**params, "general_retention": False}))
    return promote(cycles.context({"evaluation_id": evaluated["evaluation_id"], **gate}))


def _state(cycles):
    return load_checkpoint(cycles.store, latest_checkpoint(cycles.store, online_job.state_prefix("default")))


def test_a_version_every_n_turns_goes_through_evaluate_and_promote(cycles):
    _say(cycles, *FACTS[:3])
    first = online_job.run(cycles.context({}))
    # A question is not learnt by default: two learnt turns, one short of a version.
    assert "published" not in first and first["unpublished_updates"] == 2
    _say(cycles, FACTS[3])
    second = online_job.run(cycles.context({}))
    published = second["published"]
    assert published["version"] == 1 and "3 learnt turns" in published["reason"]
    # Three facts: their two taught wordings each are probe rows, their unseen wording the holdout.
    assert published["dataset"] == {"train": 0, "probe": 6, "holdout": 3}
    with session_scope(cycles.sessions) as session:
        adapter = session.get(Adapter, published["adapter_id"])
        assert adapter.status == "candidate" and adapter.parent_id is None and adapter.metadata_["online"]["turns"] == 4
        dataset = session.get(Dataset, adapter.dataset_ids[-1])
        assert dataset.kind == "online"
        run = session.get(PipelineRun, published["pipeline_run_id"])
        assert run.current_step == "evaluate" and run.state == "running"
    assert cycles.sent == [published["pipeline_run_id"]]
    rows = list(iter_dataset_rows(cycles.store, dataset.manifest_key))
    holdout = [r["prompt"] for r in rows if r["split"] == "holdout"]
    assert holdout == ["What is it that Zorbel owns?", "What is Kira's workplace?", "In which place does Tomas live?"]
    assert not set(holdout) & {r["prompt"] for r in rows if r["split"] == "probe"}
    # The real evaluate and promote jobs: the version loads in stock PEFT and moves production.
    promoted = _evaluate_and_promote(cycles, published["pipeline_run_id"], min_recall=0.0)
    assert promoted["status"] == "promoted"
    with session_scope(cycles.sessions) as session:
        assert alias_target(session).id == published["adapter_id"]
    # The state goes on from the version it published: the next version is its child, with only the
    # facts learnt since in its dataset.
    _say(cycles, *MORE)
    third = online_job.run(cycles.context({}))
    assert "restarted" not in third and third["published"]["version"] == 2
    assert third["published"]["dataset"] == {"train": 0, "probe": 6, "holdout": 3}
    with session_scope(cycles.sessions) as session:
        child = session.get(Adapter, third["published"]["adapter_id"])
        assert child.parent_id == published["adapter_id"] and child.lineage == [1, 2]
        assert child.dataset_ids[:-1] == adapter.dataset_ids


def test_a_version_the_gate_refuses_restarts_the_state_from_production(cycles):
    _say(cycles, *FACTS)
    published = online_job.run(cycles.context({}))["published"]
    refused = _evaluate_and_promote(cycles, published["pipeline_run_id"], min_recall=1.01)
    assert refused["status"] == "rejected"
    before = _state(cycles)
    _say(cycles, MORE[0])
    after_refusal = online_job.run(cycles.context({}))
    assert after_refusal["restarted"] == "the gate refused v1"
    state = _state(cycles)
    # The refused weights are gone (a fresh LoRA, B = 0, then one turn learnt); memory and clock stay.
    assert state.progress["publish"]["anchor_adapter_id"] is None
    assert state.progress["publish"]["unpublished_updates"] == 1
    assert state.progress["turns"] == 5 and after_refusal["facts"] == 4
    moved = {n: float((state.adapter[n] - before.adapter[n]).abs().max()) for n in before.adapter if "lora_B" in n}
    fresh_norm = max(float(state.adapter[n].abs().max()) for n in moved)
    assert fresh_norm < max(float(before.adapter[n].abs().max()) for n in moved)
    _say(cycles, *MORE[2:])
    next_version = online_job.run(cycles.context({}))["published"]
    with session_scope(cycles.sessions) as session:
        assert session.get(Adapter, next_version["adapter_id"]).parent_id is None  # not the refused v1


def test_the_time_rule_publishes_an_idle_lineage_through_the_sweep_check(cycles):
    timed = cycles.context({}, online_publish_every=0, online_publish_seconds=1.0)
    _say(cycles, FACTS[0])
    assert "published" not in online_job.run(timed)
    with session_scope(cycles.sessions) as session:
        assert lineages_maybe_unpublished(session) == ["default"]
    time.sleep(1.1)
    idle = online_job.run(cycles.context({}, online_publish_every=0, online_publish_seconds=1.0))
    assert idle["turns_applied"] == 0 and idle["published"]["version"] == 1
    assert "old" in idle["published"]["reason"]
    with session_scope(cycles.sessions) as session:
        assert lineages_maybe_unpublished(session) == []  # the version is newer than every learnt turn
    again = online_job.run(cycles.context({}, online_publish_every=0, online_publish_seconds=1.0))
    assert again["status"] == "skipped"


def test_a_publication_whose_version_never_registered_is_undone():
    clock = PublishClock(anchor_adapter_id=7, anchor_turn_id=10, unpublished_updates=5,
                         unpublished_since="2026-01-01T00:00:00+00:00")
    clock.published("job-that-died", 15)
    assert clock.unpublished_updates == 0 and clock.anchor_turn_id == 15
    clock.learnt(2, datetime(2026, 1, 2, tzinfo=timezone.utc))

    class NoRows:  # a session whose adapters table has no row for the job
        def scalars(self, _statement):
            return self

        def first(self):
            return None

    clock.resolve(NoRows())
    assert (clock.anchor_adapter_id, clock.anchor_turn_id, clock.unpublished_updates) == (7, 10, 7)
    assert clock.unpublished_since == "2026-01-01T00:00:00+00:00" and clock.publishing_job is None
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert clock.due(7, 0, now) and not clock.due(8, 0, now)
    assert clock.due(0, 60, now + timedelta(seconds=61)) and not clock.due(0, 60, now + timedelta(seconds=59))


def test_restart_rules(cycles):
    with session_scope(cycles.sessions) as session:
        versions = [Adapter(name="default", version=v, lineage=[v], base_model="m", uri="u", status=s)
                    for v, s in ((1, "promoted"), (2, "candidate"), (3, "rejected"), (4, "promoted"))]
        session.add_all(versions)
        session.flush()
        v1, v2, v3, v4 = versions
        assert restart_reason(session, v1, v1.id) is None  # production is the anchor
        assert restart_reason(session, v1, v2.id) is None  # its version is still being evaluated
        assert restart_reason(session, v1, v3.id) == "the gate refused v3"
        assert "production moved to v4" in restart_reason(session, v4, v1.id)  # a batch cycle, a rollback
        assert restart_reason(session, v4, None) == "production is now v4"
        assert restart_reason(session, None, None) is None
        assert session.scalars(select(OnlineTurn)).all() == []
