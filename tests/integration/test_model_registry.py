"""The model registry on a real S3-compatible server: a model added on one machine is what a worker
job on another machine loads (downloaded once, refreshed after `--replace`), and a half-published
model is never used."""

from __future__ import annotations

import pytest
import torch

from common.errors import PermanentError
from common.objectstore import open_store
from common.settings import load_settings
from workers.context import JobContext
from workers.learning.model_import import add_model
from workers.learning.tiny import build_tiny_model, write_tiny_model
from workers.model_registry import list_models, model_prefix
from workers.model_setup import load_base

from tests.support.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.integration


def _worker_job(tmp_path, name: str) -> JobContext:
    """A job context as a worker on its own machine (own home, shared S3) builds it."""
    settings = load_settings(home=tmp_path / name, base_model="house-tiny", device="cpu")
    return JobContext(settings=settings, sessions=None, store=open_store(settings), job_id=f"job-{name}")


def _equal_to_seed(model, seed: int) -> bool:
    expected = build_tiny_model(seed).state_dict()
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_a_model_added_on_one_machine_is_what_a_worker_job_elsewhere_loads(s3_env, tmp_path):
    admin = load_settings(home=tmp_path / "admin")
    store = open_store(admin)
    seed0 = write_tiny_model(tmp_path / "src0", seed=0)
    added = add_model(store, str(seed0), name="house-tiny")
    assert added["added"] and [m["name"] for m in list_models(store)] == ["house-tiny"]

    ctx = _worker_job(tmp_path, "worker")
    loaded = load_base(ctx)
    assert loaded.base_model == "house-tiny" and _equal_to_seed(loaded.model, 0)
    cached = tmp_path / "worker" / "cache" / "models" / "house-tiny"
    assert (cached / "model.safetensors").exists()
    # Replaced in the registry: the worker's stale copy is replaced on its next job.
    add_model(store, str(write_tiny_model(tmp_path / "src1", seed=1)), name="house-tiny", replace=True)
    assert _equal_to_seed(load_base(_worker_job(tmp_path, "worker")).model, 1)


def test_a_half_published_model_is_neither_listed_nor_loaded(s3_env, tmp_path):
    store = open_store(load_settings(home=tmp_path / "admin"))
    folder = write_tiny_model(tmp_path / "src", seed=0)
    # The upload crashed before the manifest: files are there, the model is not.
    store.put_file(f"{model_prefix('house-tiny')}/config.json", str(folder / "config.json"))
    store.put_file(f"{model_prefix('house-tiny')}/model.safetensors", str(folder / "model.safetensors"))
    assert list_models(store) == []
    with pytest.raises(PermanentError, match="continuum model add"):
        load_base(_worker_job(tmp_path, "worker"))
