"""The export job killed with SIGKILL at each of its crash points, then retried by the real machinery
(lease expiry → reaper → another worker): every feedback row ends in exactly one dataset, none is
lost, and the retry never makes a second dataset.

Real Postgres, S3-compatible server, redis-server and `celery worker` processes. The victim worker runs
tests/integration/distributed/export_crash_app.py, which freezes the job at the chosen point; the test
then kills it with -9 (the open transaction, its row locks and its connections die with it).
tests/integration/test_export.py covers the in-process cases (an exception, `os._exit` between upload
and commit, concurrent exporters); this file covers the four points through the worker and ledger.
"""

from __future__ import annotations

import gzip
import json
import signal

import pytest
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Dataset, Feedback
from scheduler.producer import enqueue_job
from tests.integration.distributed.harness import wait_for
from workers.celery_app import app_for
from workers.export import dataset_uid
from workers.reaper import reap_and_resend

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CRASH_APP = "tests.integration.distributed.export_crash_app"  # never imported here: it patches what it loads
POINTS = ("before_claim", "after_shard", "after_manifest", "after_commit")


def _seed(settings, resources, start: int, n: int) -> None:
    from common.feedback.importer import record_feedback_rows

    rows = [{"prompt": f"question {i}?", "response": f"answer {i}", "feedback": "thumbs_up"} for i in range(start, start + n)]
    assert record_feedback_rows(resources.sessions, settings, rows).inserted == n


def _datasets(resources) -> list[Dataset]:
    with session_scope(resources.sessions) as session:
        return list(session.scalars(select(Dataset).order_by(Dataset.id)))


def _feedback_links(resources) -> dict[int, int | None]:
    with session_scope(resources.sessions) as session:
        return dict(session.execute(select(Feedback.id, Feedback.dataset_id)).all())


def _stored(resources, prefix: str = "datasets/") -> list[str]:
    return sorted(resources.store.list(prefix))


def _prefix(dataset: Dataset) -> str:
    return dataset.manifest_key.rsplit("/", 1)[0]  # datasets/<uid>/<attempt token>


def _shard_ids(resources, dataset: Dataset) -> list[int]:
    raw = resources.store.get_bytes(f"{_prefix(dataset)}/data.jsonl.gz")
    return [json.loads(line)["feedback_id"] for line in gzip.decompress(raw).splitlines()]


def _wait_finished(resources, job_id: str, timeout: float = 60):
    return wait_for(lambda: (job := resources.ledger.get(job_id)).state in ("succeeded", "skipped", "failed") and job,
                    timeout, f"export job {job_id} to finish")


@pytest.mark.parametrize("point", POINTS)
def test_export_killed_at_crash_point_loses_and_duplicates_nothing(point, dist_settings, resources, start_worker,
                                                                   tmp_path, monkeypatch):
    _seed(dist_settings, resources, 0, 30)
    marker = tmp_path / "frozen"
    monkeypatch.setenv("CONTINUUM_TEST_EXPORT_CRASH_AT", point)
    monkeypatch.setenv("CONTINUUM_TEST_EXPORT_CRASH_MARKER", str(marker))
    victim = start_worker("victim", queues="io", app_module=CRASH_APP)
    job_id = enqueue_job(dist_settings, "export", {"holdout_percent": 0})
    uid = dataset_uid(job_id)
    wait_for(marker.exists, 60, f"the export to reach {point}")
    victim.signal(signal.SIGKILL)
    victim.wait_exit(10)

    # What the crash left behind: never a dataset that points at a partial artifact.
    first = f"datasets/{uid}/1"  # attempt 1's own prefix (its fencing token)
    shard, manifest = f"{first}/data.jsonl.gz", f"{first}/manifest.json"
    links = _feedback_links(resources)
    if point == "before_claim":  # the claim's transaction died open: rolled back, all unclaimed
        assert _datasets(resources) == [] and set(links.values()) == {None} and _stored(resources) == []
    elif point in ("after_shard", "after_manifest"):
        # The claim committed before the upload (no lock held across it): a pending dataset owns the rows.
        [pending] = _datasets(resources)
        assert pending.state == "pending" and pending.job_id == job_id and set(links.values()) == {pending.id}
        assert _stored(resources) == {"after_shard": [shard], "after_manifest": [shard, manifest]}[point]
        assert resources.ledger.get(job_id).state == "running"
    else:  # after_commit: the dataset and the job's success committed in ONE (fenced) transaction
        [dataset] = _datasets(resources)
        assert dataset.state == "ready" and dataset.job_id == job_id and set(links.values()) == {dataset.id}
        assert _stored(resources) == [shard, manifest] and dataset.manifest_key == manifest
        job = resources.ledger.get(job_id)
        assert (job.state, job.attempts) == ("succeeded", 1)  # nothing left for a retry to do

    _seed(dist_settings, resources, 100, 5)  # new feedback arrives while nobody exports
    monkeypatch.delenv("CONTINUUM_TEST_EXPORT_CRASH_AT")
    start_worker("rescuer", queues="io")
    app = app_for(dist_settings)
    if point != "after_commit":
        assert wait_for(lambda: reap_and_resend(dist_settings, app)["requeued"], 30, "the reaper to requeue") == [job_id]
        job = _wait_finished(resources, job_id)
        assert (job.state, job.attempts) == ("succeeded", 2), job.error
    # A retry claims everything unclaimed when it had no claim yet; else it resumes its own 30 rows.
    assert job.result["claimed"] == (35 if point == "before_claim" else 30)

    # A later export picks up whatever the export did not claim.
    follow_up = _wait_finished(resources, enqueue_job(dist_settings, "export", {"holdout_percent": 0}))
    assert follow_up.state == ("skipped" if point == "before_claim" else "succeeded"), follow_up.error

    datasets = _datasets(resources)
    assert sum(d.job_id == job_id for d in datasets) == 1  # no duplicate dataset after the retry
    assert all(d.state == "ready" for d in datasets)
    links = _feedback_links(resources)
    assert len(links) == 35 and None not in links.values()  # none lost
    exported: list[int] = []
    for dataset in datasets:
        ids = _shard_ids(resources, dataset)
        assert sorted(ids) == sorted(fid for fid, ds in links.items() if ds == dataset.id)
        exported.extend(ids)
    assert sorted(exported) == sorted(links)  # every row in exactly one dataset
    # Exactly the datasets' own files in the store: a finished export removes its earlier attempts' files.
    assert _stored(resources) == sorted(f"{_prefix(d)}/{name}" for d in datasets
                                        for name in ("data.jsonl.gz", "manifest.json"))
