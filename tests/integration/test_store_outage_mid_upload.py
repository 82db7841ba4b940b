"""The object store's connection dies in the middle of an upload (issue 4, reliability test 10).

test_s3_store.py holds the store-level contract (an exception inside `open_write` aborts the multipart
upload; a wrapper failing on an artifact's 2nd file leaves no manifest). Here the failure is the
network itself — a loopback proxy in front of the real S3-compatible server tears the TCP connections
mid-request and refuses new ones — and it hits the real jobs: the export's multipart dataset shard and
the train job's adapter files. Either way the partial artifact is never complete, never "latest", no
database row points at it, and the retried job publishes it once.
"""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from sqlalchemy import func, select

from common.db import Adapter, Dataset, Feedback, create_db_engine, session_factory
from common.db.engine import session_scope
from common.errors import ObjectStoreUnavailable, RetryableError
from common.objectstore.artifacts import download_artifact, is_complete, latest_artifact, list_complete_artifacts
from common.objectstore.s3 import MIN_PART_SIZE, S3ObjectStore
from common.settings import load_settings
from tests.support.cutting_proxy import CuttingProxy

pytestmark = pytest.mark.integration
N_ROWS = 8000


@pytest.fixture
def outage(migrated_postgres_url, s3_env, s3_server, monkeypatch):
    """(settings, sessions, direct store, store through a cuttable link, the proxy)."""
    monkeypatch.setenv("CONTINUUM_DATABASE_URL", migrated_postgres_url)
    direct = S3ObjectStore.from_settings(load_settings())
    proxy = CuttingProxy(int(s3_server.port))
    monkeypatch.setenv("CONTINUUM_S3_ENDPOINT_URL", proxy.endpoint)
    settings = load_settings()
    # Two tries per request (not five) only to keep the test short: the link stays down either way.
    flaky = S3ObjectStore.from_settings(settings, max_attempts=2, part_size=MIN_PART_SIZE)
    engine = create_db_engine(migrated_postgres_url)
    yield settings, session_factory(engine), direct, flaky, proxy
    proxy.close()
    engine.dispose()


def _count(sessions, model) -> int:
    with session_scope(sessions) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_link_cut_mid_multipart_dataset_upload(outage):
    from common.feedback.importer import record_feedback_rows
    from workers.export import ExportConfig, dataset_uid, export_feedback

    settings, sessions, direct, flaky, proxy = outage
    # High-entropy 2 KB responses: the gzip shard is ~9 MiB, a multipart upload of two parts (5 MiB each at most).
    rows = [{"prompt": f"q{i}?", "response": "".join(hashlib.sha512(f"{i}-{j}".encode()).hexdigest() for j in range(16)),
             "feedback": "thumbs_up"} for i in range(N_ROWS)]
    assert record_feedback_rows(sessions, settings, rows).inserted == N_ROWS
    config = ExportConfig.create(holdout_percent=0, max_rows=10_000)
    uid = dataset_uid("job-outage")

    proxy.cut_after(MIN_PART_SIZE + (1 << 20))  # part 1 goes through; the link dies 1 MiB into part 2
    with pytest.raises(ObjectStoreUnavailable) as caught:
        export_feedback(sessions, flaky, config, "job-outage")
    assert isinstance(caught.value, RetryableError) and proxy.cuts == 1 and proxy.refused >= 1
    # Nothing visible: the parts sit in an unfinished upload only. The claim committed before the
    # upload (no lock is held across it), so the rows belong to this job's dataset, still `pending`.
    assert list(direct.list("datasets/")) == [] and not is_complete(direct, f"datasets/{uid}")
    pending = direct.client.list_multipart_uploads(Bucket=direct.bucket).get("Uploads", [])
    assert [u["Key"] for u in pending] == [f"{direct.prefix}/datasets/{uid}/data.jsonl.gz"]
    with session_scope(sessions) as session:
        assert list(session.scalars(select(Dataset.state))) == ["pending"]
        assert session.scalar(select(func.count()).where(Feedback.dataset_id.is_not(None))) == N_ROWS

    proxy.heal()
    result = export_feedback(sessions, flaky, config, "job-outage")  # the retried job
    assert result.status == "exported" and result.claimed == N_ROWS and result.dataset_uid == uid
    assert _count(sessions, Dataset) == 1
    raw = direct.get_bytes(f"datasets/{uid}/data.jsonl.gz")
    assert len(raw) > MIN_PART_SIZE and hashlib.sha256(raw).hexdigest() == result.sha256
    assert len(gzip.decompress(raw).splitlines()) == N_ROWS
    manifest = json.loads(direct.get_bytes(f"datasets/{uid}/manifest.json"))
    assert manifest["sha256"] == result.sha256


def _train_ctx(settings, sessions, store, job_id: str, dataset_id: int, fresh: bool):
    from workers.context import JobContext

    params = {"dataset_id": dataset_id, "fresh": fresh,
              "train": {"epochs": 2, "batch_size": 4, "checkpoint_every": 2, "max_length": 64, "warmup_steps": 0}}
    return JobContext(settings=settings, sessions=sessions, store=store, job_id=job_id, params=params)


def test_link_cut_mid_adapter_upload_never_becomes_latest(outage, tmp_path):
    import torch

    from common.feedback.importer import record_feedback_rows
    from workers.export import ExportConfig, export_feedback
    from workers.lineage import current_parent
    from workers.train.logic import run as train

    torch.set_num_threads(1)
    settings, sessions, direct, flaky, proxy = outage
    rows = [{"prompt": f"What is the code word {i}?", "response": f"word-{i}", "feedback": "thumbs_up"} for i in range(12)]
    record_feedback_rows(sessions, settings, rows)
    dataset_id = export_feedback(sessions, direct, ExportConfig.create(holdout_percent=0), "export-1").dataset_id
    first = train(_train_ctx(settings, sessions, flaky, "train-1", dataset_id, fresh=True))
    root = f"adapters/{settings.adapter_name}"
    assert list_complete_artifacts(direct, root) == [f"{root}/train-1"]

    def cut_inside_weights_upload(request, **_):
        if request.url.endswith("/adapter_model.safetensors") and proxy.cuts == 0 and not proxy.is_cut:
            proxy.cut_after(4096)  # the headers and the first bytes of the weights, then the link dies

    flaky.client.meta.events.register("before-send.s3.PutObject", cut_inside_weights_upload)
    with pytest.raises(ObjectStoreUnavailable):
        train(_train_ctx(settings, sessions, flaky, "train-2", dataset_id, fresh=False))
    assert proxy.cuts == 1
    # Debris without a manifest; the previous version stays the latest, no row names the partial one.
    debris = list(direct.list(f"{root}/train-2/"))
    assert debris and f"{root}/train-2/manifest.json" not in debris
    assert f"{root}/train-2/adapter_model.safetensors" not in debris  # the torn object never appeared
    assert latest_artifact(direct, root) == f"{root}/train-1"
    with session_scope(sessions) as session:
        assert session.scalars(select(Adapter.job_id)).all() == ["train-1"]
        assert current_parent(session, settings.adapter_name).id == first["adapter_id"]

    proxy.heal()
    second = train(_train_ctx(settings, sessions, flaky, "train-2", dataset_id, fresh=False))
    assert second["version"] == 2 and second["uri"].endswith(f"{root}/train-2")
    assert list_complete_artifacts(direct, root) == [f"{root}/train-1", f"{root}/train-2"]
    with session_scope(sessions) as session:
        assert sorted(session.scalars(select(Adapter.job_id))) == ["train-1", "train-2"]
    downloaded = download_artifact(direct, f"{root}/train-2", tmp_path / "v2")  # sizes and sha256 verified
    assert (downloaded / "adapter_model.safetensors").stat().st_size > 0
