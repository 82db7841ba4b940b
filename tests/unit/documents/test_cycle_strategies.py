"""Document strategies inside the batch cycle, with the real `calibrate` and `train` jobs on the tiny
model (SQLite ledger, local object store): the calibration is an artifact with lineage (stored once,
reused by the lineage's later cycles); a sparse_memory cycle publishes a stock PEFT adapter whose
closed units' columns are exactly zero and whose open units grow cycle by cycle; a ttt cycle trains
only the last quarter's MLPs and folds its alpha blend into the published `lora_alpha`; a lineage
keeps one strategy, and a missing calibration or wrong option is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select

from common.db import session_scope
from common.db.models import UnitCalibration
from common.documents.reading import DocumentText
from common.documents.store import add_documents
from common.errors import ValidationError
from tests.unit.learning_keep.cycles import make_cycles
from workers.calibrate import logic as calibrate_job
from workers.context import JobContext
from workers.ingest import job as ingest_job
from workers.model_setup import download_adapter_row

TOWNS = ("The town of Quenby lies on the river Sull. Its market sells copper kettles every Tuesday. "
         "Quenby was founded by Ada Vornel, a ferryman, and its mayor is Osric Tamkel.")
ISLANDS = ("The island of Morrow has three lighthouses. Its keepers trade amber for salt every winter. "
           "The largest lighthouse on Morrow was built by Hesper Quill.")


@pytest.fixture()
def cycles(tmp_path, migrated_sqlite_url):
    made = make_cycles(tmp_path, migrated_sqlite_url, documents_chunk_tokens=32, documents_chunk_overlap=8,
                       documents_probe_percent=0)
    yield made
    made.close()


def _documents(cycles, title: str, text: str) -> int:
    added = add_documents(cycles.sessions, cycles.store, [DocumentText(title, text, f"{title}.txt")], [])
    return ingest_job.run(cycles.context({"document_ids": added.added}))["dataset_id"]


def _published(cycles, adapter_id: int, tmp: Path) -> tuple[dict, dict, dict]:
    """(adapter_config.json, tensors, metadata) of a published adapter, downloaded as evaluate would."""
    adapter = cycles.adapter(adapter_id)
    folder = download_adapter_row(JobContext(settings=cycles.settings, sessions=cycles.sessions, store=cycles.store,
                                             job_id="read", params={}), adapter, tmp)
    return (json.loads((folder / "adapter_config.json").read_text()),
            load_file(str(folder / "adapter_model.safetensors")), adapter.metadata_)


def test_sparse_memory_cycles_open_only_their_units_against_one_calibration(cycles, tmp_path):
    assert calibrate_job.run(cycles.context({"strategy": "lora"}))["status"] == "skipped"
    calibrated = calibrate_job.run(cycles.context({"strategy": "sparse_memory"}))
    assert calibrated["status"] == "calibrated" and calibrated["texts"] == 24
    again = calibrate_job.run(cycles.context({"strategy": "sparse_memory"}))
    assert again == {"status": "reused", "calibration_id": calibrated["calibration_id"], "texts": 24}
    with session_scope(cycles.sessions) as session:
        rows = session.scalars(select(UnitCalibration)).all()
        assert len(rows) == 1 and rows[0].adapter_name == cycles.settings.adapter_name
        assert cycles.store.exists(f"{rows[0].uri}/unit_statistics.safetensors")

    options = {"strategy": "sparse_memory", "strategy_options": {"top_units": 8}}
    first = cycles.train(_documents(cycles, "Towns", TOWNS), **options)
    assert first["strategy"] == "sparse_memory"
    config, tensors, meta = _published(cycles, first["adapter_id"], tmp_path / "v1")
    assert config["target_modules"] == ["down_proj"] and meta["strategy"]["calibration_id"] == calibrated["calibration_id"]
    units = {int(k): set(v) for k, v in meta["strategy"]["units"].items()}
    assert all(len(u) == 8 for u in units.values()) and len(units) == 4
    for name, tensor in tensors.items():
        if "lora_A" in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            used = {j for j in range(tensor.shape[1]) if tensor[:, j].abs().sum() > 0}
            assert used == units[layer], name  # closed units' columns exactly zero; every open one in use

    second = cycles.train(_documents(cycles, "Islands", ISLANDS), **options)
    _, tensors2, meta2 = _published(cycles, second["adapter_id"], tmp_path / "v2")
    units2 = {int(k): set(v) for k, v in meta2["strategy"]["units"].items()}
    assert all(units[layer] <= units2[layer] for layer in units)  # the parent's units stay open
    assert meta2["strategy"]["units_opened_this_cycle"] > 0
    for name, tensor in tensors2.items():
        if "lora_A" in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            closed = [j for j in range(tensor.shape[1]) if j not in units2[layer]]
            assert torch.equal(tensor[:, closed], torch.zeros_like(tensor[:, closed]))

    assert meta2["lora"]["target_modules"] == ["down_proj"]  # what was published, not the recipe's LoRA
    with pytest.raises(ValidationError, match="was learnt with strategy 'sparse_memory'.*learn with strategy "
                                              "'sparse_memory'.*fresh"):
        cycles.train(_documents(cycles, "More", TOWNS + " Quenby has a mill."), strategy="lora")
    # Named no strategy, a cycle continues with the lineage's own (and its calibration).
    third = cycles.train(_documents(cycles, "Mill", TOWNS + " Quenby has a windmill."))
    assert third["strategy"] == "sparse_memory"
    assert cycles.adapter(third["adapter_id"]).metadata_["strategy"]["calibration_id"] == calibrated["calibration_id"]
    with pytest.raises(ValidationError, match="needs a unit calibration for lineage 'other'"):
        cycles.train(second and _documents(cycles, "Other", ISLANDS + " Morrow has a bell."),
                     adapter_name="other", **options)
    with pytest.raises(ValidationError, match="has no option"):
        cycles.train(1, strategy="sparse_memory", strategy_options={"top_unit": 8})
    with pytest.raises(ValidationError, match="alpha_decay must be a number"):
        cycles.train(1, strategy="ttt", strategy_options={"alpha_decay": "fast"})
    with pytest.raises(ValidationError, match="alpha_decay \\(-0.1\\) >= 0"):
        cycles.train(1, strategy="ttt", strategy_options={"alpha_decay": -0.1})


def test_a_resumed_sparse_cycle_gates_the_units_its_first_attempt_chose(cycles):
    """The choice is kept beside the job's checkpoints: a rerun that would choose differently (here, other
    options) still gates the first attempt's units, so no trained column is closed."""
    from workers.documents.sparse_memory import UnitStatistics, unit_columns
    from workers.learning.lora import LoraSettings
    from workers.learning.tiny import build_tiny_model, build_tokenizer
    from workers.train.strategies import CycleStrategy

    tokenizer = build_tokenizer(0)
    statistics = UnitStatistics.calibrate(build_tiny_model(0), tokenizer, ["General text about rivers.",
                                                                           "Another text about markets."], 0.05)
    rows = [{"text": TOWNS}]
    chosen = []
    for top_units in (8, 2):  # the second "attempt" would choose 2 units per layer, not 8
        strategy = CycleStrategy("sparse_memory", {"top_units": top_units, "active_fraction": 0.05},
                                 statistics=statistics)
        model = strategy.attach(build_tiny_model(0), LoraSettings(r=4, alpha=8, dropout=0.0), None)
        with strategy.training(model, tokenizer, rows, cycles.store, "checkpoints/job-1/units.json"):
            chosen.append({layer: units.tolist() for layer, units in strategy.chosen.items()})
            open_columns = {name: int((p.detach().abs().sum(0) > 0).sum()) for name, (_, p) in unit_columns(model).items()}
    assert chosen[0] == chosen[1] and all(len(u) == 8 for u in chosen[1].values())
    assert set(open_columns.values()) == {8}


def test_ttt_cycles_train_the_last_quarter_and_fold_the_blend(cycles, tmp_path):
    options = {"strategy": "ttt", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}}
    first = cycles.train(_documents(cycles, "Towns", TOWNS), **options)
    config, tensors, meta = _published(cycles, first["adapter_id"], tmp_path / "v1")
    assert meta["strategy"]["alpha_while_learning"] == 0.95 and meta["strategy"]["alpha"] == pytest.approx(0.90)
    assert config["lora_alpha"] == pytest.approx(8 * (1 - 0.90))  # the blend, where stock PEFT reads it
    assert config["layers_to_transform"] == [3] and sorted(config["target_modules"]) == ["down_proj", "gate_proj", "up_proj"]
    assert {n.split(".layers.")[1].split(".")[0] for n in tensors} == {"3"}  # the last quarter of 4 layers

    second = cycles.train(_documents(cycles, "Islands", ISLANDS), **options)
    config2, _, meta2 = _published(cycles, second["adapter_id"], tmp_path / "v2")
    assert meta2["strategy"]["alpha_while_learning"] == pytest.approx(0.90)  # where the parent left it
    assert config2["lora_alpha"] == pytest.approx(8 * (1 - 0.85)) and meta2["strategy"]["lora_alpha"] == 8
    assert meta2["lora"]["layers_to_transform"] == [3] and meta2["lora"]["alpha"] == pytest.approx(8 * (1 - 0.85))
