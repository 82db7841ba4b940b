"""The Fisher belongs to the cycle that reads it: the pipeline's `fisher` step takes the `train` step's
recipe, overrides and lineage, records what it was computed for, and `train` refuses one computed for
another adapter, parameter space or base model (real jobs on the tiny model, embedded ledger).

Deliberate breaks these tests were run against (each turned a test here red, then was reverted):
- `_step_params` not passing the train step's recipe/overrides to the fisher step (the old `return
  overrides`): test_the_fisher_step_takes_the_train_steps_recipe_and_lineage,
  test_a_pipeline_fisher_is_accepted_by_its_train_step
- the fisher job ignoring `recipe_overrides`: test_a_pipeline_fisher_is_accepted_by_its_train_step
- `train` not checking the Fisher's adapter / space (checks removed):
  test_train_refuses_a_fisher_of_another_adapter_or_space
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import FisherArtifact as FisherRow
from common.db.models import PipelineRun
from common.errors import ValidationError
from common.orchestration.pipeline import _step_params
from tests.unit.learning_keep.cycles import make_cycles
from workers.learning.fisher_artifact import FisherArtifact
from workers.train.logic import check_fisher_row


@pytest.fixture
def cycles(tmp_path, migrated_sqlite_url):
    made = make_cycles(tmp_path, migrated_sqlite_url)
    yield made
    made.close()


TRAIN_STEP = {"recipe": "ewc_lora", "recipe_overrides": {"ewc_strength": 0.5, "ewc_space": "delta_w"},
              "adapter_name": "default"}


def test_the_fisher_step_takes_the_train_steps_recipe_and_lineage(cycles):
    run = PipelineRun(id="r", params={"steps": {"train": {**TRAIN_STEP, "parent_adapter_id": 4}}})
    params = _step_params(SimpleNamespace(settings=cycles.settings), run, "fisher", {})
    assert params == {**TRAIN_STEP, "adapter_id": 4}
    # an explicit per-step override of the fisher step still wins
    run = PipelineRun(id="r", params={"steps": {"train": TRAIN_STEP, "fisher": {"recipe": "default"}}})
    assert _step_params(SimpleNamespace(settings=cycles.settings), run, "fisher", {})["recipe"] == "default"
    fresh = PipelineRun(id="r", params={"steps": {"train": {"fresh": True}}})
    assert _step_params(SimpleNamespace(settings=cycles.settings), fresh, "fisher", {}) == {"fresh": True}


def _fisher(cycles, params):
    from workers.fisher.logic import run

    result = run(cycles.context(params))
    with session_scope(cycles.sessions) as session:
        row = session.get(FisherRow, result["fisher_id"])
    return result, FisherArtifact.from_bytes(cycles.store.get_bytes(row.uri))


def test_a_pipeline_fisher_is_accepted_by_its_train_step(cycles):
    d1, d2, d3 = (cycles.dataset(n, {"train": 8, "probe": 2}) for n in ("d1", "d2", "d3"))
    v1 = cycles.train(d1)["adapter_id"]
    v2 = cycles.train(d2)["adapter_id"]
    run = PipelineRun(id="r", params={"steps": {"train": TRAIN_STEP}})
    result, artifact = _fisher(cycles, _step_params(SimpleNamespace(settings=cycles.settings), run, "fisher", {}))
    # computed for the train step's parent, in the space its recipe overrides ask for, and says so
    assert result["adapter_id"] == v2 and artifact.adapter_id == v2 and artifact.space == "delta_w"
    assert artifact.recipe["name"] == "ewc_lora" and artifact.recipe["ewc_strength"] == 0.5
    assert artifact.base_model_id == "builtin:tiny" and artifact.scale and artifact.scale > 0
    trained = cycles.train(d3, fisher_id=result["fisher_id"], **TRAIN_STEP)
    meta = cycles.adapter(trained["adapter_id"]).metadata_
    assert meta["fisher_id"] == result["fisher_id"] and not any("ewc off" in n for n in meta["notes"])
    assert meta["train"]["penalty_ratio"].get("ewc") is not None  # EWC ran with that Fisher
    assert v1 != v2
    # Where it trained and the memory it took, for sizing a machine (README: memory and precision).
    assert trained["device"] == "cpu (float32)" and trained["peak_memory_mib"]["rss"] > 100
    assert "cuda" not in trained["peak_memory_mib"]


def test_train_refuses_a_fisher_of_another_adapter_or_space(cycles):
    d1, d2, d3 = (cycles.dataset(n, {"train": 8}) for n in ("d1", "d2", "d3"))
    v1 = cycles.train(d1)["adapter_id"]
    of_v1, _ = _fisher(cycles, {"adapter_id": v1, "recipe": "ewc_lora"})
    v2 = cycles.train(d2)["adapter_id"]
    refused = r"computed for adapter \d+, not this cycle's parent .*run the fisher step"
    with pytest.raises(ValidationError, match=refused):
        cycles.train(d3, fisher_id=of_v1["fisher_id"], recipe="ewc_lora", parent_adapter_id=v2)
    of_v2, _ = _fisher(cycles, {"adapter_id": v2, "recipe": "ewc_lora"})  # LoRA space
    with pytest.raises(ValidationError, match="parameter space 'lora'.*'delta_w'.*run the fisher step"):
        cycles.train(d3, fisher_id=of_v2["fisher_id"], recipe="ewc_delta_w", parent_adapter_id=v2)
    # Found by lookup rather than asked for: a recipe change leaves EWC off and says why, no failure.
    quiet = cycles.train(d3, recipe="ewc_delta_w", parent_adapter_id=v2)
    assert any("ewc off" in n and "parameter space" in n for n in quiet["notes"])
    with session_scope(cycles.sessions) as session:
        assert session.scalars(select(FisherRow)).all()  # nothing was deleted or rewritten


def test_a_fisher_on_another_base_model_or_for_a_fresh_adapter_is_refused(cycles):
    from common.db.models import Adapter

    parent = Adapter(id=3, name="default", version=2, base_model="builtin:tiny", uri="u")
    row = FisherRow(id=9, uri="u", adapter_id=3, num_samples=1, mode="empirical", gamma=0.9, base_model="other")
    with pytest.raises(ValidationError, match="base model 'other'.*recompute the Fisher"):
        check_fisher_row(row, parent, "builtin:tiny")
    with pytest.raises(ValidationError, match="fresh adapter: drop fisher_id"):
        check_fisher_row(row, None, "builtin:tiny")
    row.base_model = "builtin:tiny"
    check_fisher_row(row, parent, "builtin:tiny")  # its own parent, same base: accepted
