"""The evaluate job on SQLite + a local store, three cycles of a narrow tiny model.

The adapters are trained here (not by the train job) so each version is exactly what the test needs:
v1 learns dataset A; v2 learns B with A's `train` rows replayed (as replay does), so it keeps A's
train rows and forgets A's probe rows; v3 is v2's weights published again as the child that "taught"
C, so its parent has already forgotten A. Retention must be read on probe rows and forgetting
measured against the score A had when v1 first taught it — not against the parent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from common.db import Adapter, DatasetScore, create_db_engine, session_factory, session_scope
from common.feedback import record_feedback_rows
from common.objectstore import LocalObjectStore
from common.settings import load_settings
from tests.support.torch_threads import NARROW
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)
from workers.context import JobContext
from workers.evaluate.logic import run as evaluate
from workers.export import ExportConfig, export_feedback, iter_dataset_rows
from workers.learning.synthetic import make_fact_sets

pytestmark = pytest.mark.integration


@pytest.fixture
def world(migrated_sqlite_url, tmp_path):
    from workers.learning.tiny import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "narrow", seed=0, **NARROW)
    settings = load_settings(home=tmp_path / "home", database_url=migrated_sqlite_url,
                             storage_url=f"file://{tmp_path / 'objects'}", base_model=str(model_dir),
                             eval_max_samples=64, device="cpu")
    engine = create_db_engine(migrated_sqlite_url)
    yield settings, session_factory(engine), LocalObjectStore(tmp_path / "objects"), model_dir
    engine.dispose()


def _export(settings, sessions, store, rows, name) -> tuple[int, str]:
    record_feedback_rows(sessions, settings, rows)
    result = export_feedback(sessions, store, ExportConfig.create(holdout_percent=10, probe_percent=30), name)
    return result.dataset_id, result.manifest_key


def _publish(store, model, version, parent_id, dataset_ids, sessions) -> int:
    from workers.learning.lora import publish_adapter

    prefix = f"adapters/test/v{version}"
    publish_adapter(store, prefix, model, {"prefix": prefix})
    with session_scope(sessions) as session:
        row = Adapter(name="default", version=version, parent_id=parent_id, lineage=list(range(1, version + 1)),
                      base_model="narrow", uri=f"{store.url}/{prefix}", status="candidate", dataset_ids=dataset_ids,
                      metadata_={"prefix": prefix})
        session.add(row)
        session.flush()
        return row.id


def _evaluate(settings, sessions, store, adapter_id, job, **params):
    ctx = JobContext(settings=settings, sessions=sessions, store=store, job_id=job,
                     params={"adapter_id": adapter_id, "general_retention": False, **params})
    return evaluate(ctx)


def _metrics(sessions, evaluation_id):
    from common.db import Evaluation

    with session_scope(sessions) as session:
        return session.get(Evaluation, evaluation_id).metrics


def test_retention_on_probe_rows_against_first_taught_scores(world):
    from workers.learning.lora import DEFAULT_TARGETS, LoraSettings, attach_adapter
    from workers.learning.tiny import build_tokenizer
    from workers.learning.training import TrainConfig, fit
    from transformers import AutoModelForCausalLM

    settings, sessions, store, model_dir = world
    facts = make_fact_sets(3, 40, seed=5)
    ids, keys = [], []
    for i, name in enumerate("ABC"):
        rows = [{"prompt": r["prompt"], "response": r["response"], "feedback": "thumbs_up"} for r in facts[i]]
        dataset_id, key = _export(settings, sessions, store, rows, f"export-{name}")
        ids.append(dataset_id)
        keys.append(key)
    a_train, a_probe = (list(iter_dataset_rows(store, keys[0], split=s)) for s in ("train", "probe"))
    b_taught = list(iter_dataset_rows(store, keys[1], split=("train", "probe")))
    assert len(a_probe) >= 6 and len(a_train) >= 12

    tokenizer = build_tokenizer(0)
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=tuple(DEFAULT_TARGETS)))
    config = TrainConfig(learning_rate=5e-3, epochs=100, batch_size=16, seed=0)
    fit(model, tokenizer, a_train + a_probe, config)
    v1 = _publish(store, model, 1, None, [ids[0]], sessions)
    first = _evaluate(settings, sessions, store, v1, "eval-1", general_retention=True)
    m1 = _metrics(sessions, first["evaluation_id"])
    # General retention against the base (adapter off); the base's answers are cached for later versions.
    assert m1["general_retention"]["questions"] >= 60 and m1["general_retention"]["agreement"] is not None
    [cached] = list(store.list("cache/general-base-answers/"))
    assert m1["recall"]["token_accuracy"] > 0.8 and m1["recall_probe"]["samples"] == len(a_probe)
    assert m1["retention"] == {} and m1["forgetting_max"] is None  # nothing earlier: not a reassuring 0.0
    assert m1["generalisation"]["samples"] > 0 and m1["parent_id"] is None

    fit(model, tokenizer, b_taught + a_train, config)  # replay draws A's train rows only
    v2 = _publish(store, model, 2, v1, [ids[1]], sessions)
    m2 = _metrics(sessions, _evaluate(settings, sessions, store, v2, "eval-2", general_retention=True)["evaluation_id"])
    assert list(store.list("cache/general-base-answers/")) == [cached] and m2["general_retention"]["prompts"] > 0
    v3 = _publish(store, model, 3, v2, [ids[2]], sessions)  # the parent's weights: no new forgetting
    m3 = _metrics(sessions, _evaluate(settings, sessions, store, v3, "eval-3")["evaluation_id"])

    with session_scope(sessions) as session:
        stored = {(s.adapter_id, s.dataset_id): s.token_accuracy for s in session.scalars(select(DatasetScore))}
    a, b, c = (str(i) for i in ids)
    first_a = stored[(v1, ids[0])]
    assert first_a == m1["recall_probe"]["token_accuracy"] > 0.8
    # v2 kept the replayed train rows but forgot the probe rows: retention reads the probe rows.
    retention = m2["retention"][a]
    assert retention["samples"] == len(a_probe) and retention["first"] == first_a
    assert retention["forgetting"] > 0.3, retention
    # v3 is v2 again: against its parent it forgot nothing, against first taught it forgot all v2 did.
    retention = m3["retention"][a]
    assert retention["first"] == first_a and retention["now"] == pytest.approx(m2["retention"][a]["now"])
    assert retention["forgetting"] == pytest.approx(m2["retention"][a]["forgetting"])
    assert retention["forgetting"] > 0.3
    assert m3["retention"][b]["first"] == stored[(v2, ids[1])] and m3["retention"][b]["forgetting"] == 0.0
    assert m3["forgetting_max"] == pytest.approx(retention["forgetting"])
    assert m3["forgetting_mean"] == pytest.approx(retention["forgetting"] / 2)
    matrix = m3["accuracy_matrix"]
    assert matrix["versions"] == ["v1", "v2", "v3"] and matrix["datasets"] == [a, b, c]
    assert matrix["matrix"][0] == [first_a, None, None]
    assert matrix["matrix"][2][0] == pytest.approx(m3["retention"][a]["now"])
    assert m3["backward_transfer"] == pytest.approx(((retention["now"] - first_a) + 0.0) / 2)
    # A retried job returns the stored evaluation and writes nothing twice.
    again = _evaluate(settings, sessions, store, v3, "eval-3")
    assert again["metrics"]["forgetting_max"] == pytest.approx(m3["forgetting_max"])
