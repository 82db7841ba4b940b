"""Fencing chaos tests (issue 9, E): real Postgres, redis-server, an S3-compatible server and real worker
processes. Each one failed on the code before fencing:

- a SIGSTOPped worker's training child published and registered its adapter while the job's second
  attempt held the lease, and re-publishing deleted the manifest under a registered adapter;
- a reaper whose clock ran 5 minutes ahead requeued a live job (leases were judged by its clock);
- a job always stopped before making progress was handed back forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Adapter
from common.objectstore.artifacts import download_artifact, read_manifest
from scheduler.producer import enqueue_job
from tests.integration.distributed.harness import REPO, wait_for
from tests.integration.distributed.test_training_crashes import (  # noqa: F401 - `dataset_id` is a fixture
    TRAIN,
    _checkpoint_steps,
    dataset_id,
)
from workers.celery_app import app_for
from workers.diagnostics.sleep import executions
from workers.reaper import reap_and_resend

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _adapters(resources, job_id: str) -> list[Adapter]:
    with session_scope(resources.sessions) as session:
        return list(session.scalars(select(Adapter).where(Adapter.job_id == job_id)))


def _key_of(store, uri: str) -> str:
    return uri[len(store.url.rstrip("/")) + 1:]


class _ManifestWatch:
    """Polls while the test runs: every registered adapter of the job must have its manifest."""

    def __init__(self, resources, job_id: str):
        self.resources, self.job_id = resources, job_id
        self.missing: list[str] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_ManifestWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        store = self.resources.store
        while not self._stop.is_set():
            for adapter in _adapters(self.resources, self.job_id):
                prefix = _key_of(store, adapter.uri)
                if not store.exists(f"{prefix}/manifest.json"):
                    self.missing.append(prefix)
            self.checks += 1
            time.sleep(0.05)


def test_sigstopped_worker_publishes_nothing_its_successor_is_credited(dist_settings, resources, start_worker,
                                                                      dataset_id, tmp_path):  # noqa: F811
    stalled = start_worker("stalled", queues="cpu")
    params = {"dataset_id": dataset_id, "fresh": True, "train": {**TRAIN, "epochs": 8}}
    job_id = enqueue_job(dist_settings, "train", params, device="cpu")
    wait_for(lambda: _checkpoint_steps(resources, job_id), 240, "the first training checkpoint")
    first_token = resources.ledger.get(job_id).lease_token
    stale_prefix = f"adapters/{dist_settings.adapter_name}/{job_id}/{first_token}"
    app = app_for(dist_settings)
    with _ManifestWatch(resources, job_id) as watch:
        stalled.signal(signal.SIGSTOP)  # the worker (not its child): nobody renews the lease now
        try:
            # The lease runs out and the job is reaped while the stale child trains on, unsupervised.
            wait_for(lambda: reap_and_resend(dist_settings, app)["requeued"], 60, "the reaper to requeue")
            # Let the stale child finish: it publishes under its own attempt prefix, then its final
            # write — register the adapter + mark the job done — must be refused (lease gone).
            wait_for(lambda: resources.store.exists(f"{stale_prefix}/manifest.json"), 300,
                     "the stale attempt to publish")
            time.sleep(3)  # its registration attempt comes right after the publish
            assert _adapters(resources, job_id) == [], "the stale attempt registered its adapter"
            start_worker("successor", queues="cpu")
            job = wait_for(lambda: (j := resources.ledger.get(job_id)).state in ("succeeded", "failed") and j,
                           300, "the successor to finish the job")
        finally:
            stalled.signal(signal.SIGCONT)
        time.sleep(5)  # the stale worker wakes up: whatever it still does must change nothing
    assert job.state == "succeeded" and job.attempts == 2, job.error
    final = resources.ledger.get(job_id)
    assert final.state == "succeeded" and final.lease_token > first_token

    [adapter] = _adapters(resources, job_id)  # the stale attempt registered nothing
    prefix = _key_of(resources.store, adapter.uri)
    assert prefix == f"adapters/{dist_settings.adapter_name}/{job_id}/{final.lease_token}", (
        "the registered adapter must live under the credited attempt's own prefix")
    assert final.result["adapter_id"] == adapter.id
    # Byte for byte the credited attempt's: its manifest (written by that attempt, under its prefix)
    # matches every file, and it is the attempt that resumed from a checkpoint (the stale one did not).
    manifest = read_manifest(resources.store, prefix)
    assert manifest["metadata"]["train"]["resumed_from"], "the registered adapter is the stale attempt's"
    download_artifact(resources.store, prefix, tmp_path / "verify")  # sizes + sha256 of every file
    assert not watch.missing and watch.checks > 10, f"a registered adapter lost its manifest: {watch.missing[:3]}"
    assert stalled.proc.poll() is None  # the stalled worker lives on, and did no harm


_SKEWED_REAPER = r"""
import datetime as _dt, json, sys

class Skewed(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return _dt.datetime.now(tz) + _dt.timedelta(minutes=5)

from common.settings import load_settings
from workers.celery_app import app_for
from workers.reaper import reap_and_resend

# Every `datetime` the ledger (and everything else of ours) reads is 5 minutes ahead.
for name, module in list(sys.modules.items()):
    if name.split(".")[0] in ("common", "workers", "scheduler") and getattr(module, "datetime", None) is _dt.datetime:
        module.datetime = Skewed
settings = load_settings().check()
print(json.dumps(reap_and_resend(settings, app_for(settings))))
"""


def test_reaper_with_a_clock_five_minutes_ahead_steals_no_live_lease(dist_settings, resources, start_worker):
    worker = start_worker("holder")
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 40, "step_seconds": 0.25}, device="cpu")
    wait_for(lambda: int((resources.ledger.get(job_id).progress or {}).get("step", 0)) >= 2, 60, "progress")
    held = resources.ledger.get(job_id)
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _SKEWED_REAPER], cwd=REPO, env=dict(os.environ),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        reaped = json.loads(done.stdout.strip().splitlines()[-1])
        assert reaped["requeued"] == [] and reaped["dead"] == [], f"the skewed reaper stole a live lease: {reaped}"
        now = resources.ledger.get(job_id)
        assert (now.state, now.lease_owner, now.lease_token) == ("running", held.lease_owner, held.lease_token)
    job = wait_for(lambda: (j := resources.ledger.get(job_id)).state in ("succeeded", "failed") and j, 60, "the job")
    assert job.state == "succeeded" and job.attempts == 1 and len(executions(resources.store, job_id)) == 1
    assert worker.proc.poll() is None


def test_job_always_stopped_before_progress_is_dead_lettered_after_n_releases(dist_settings, resources,
                                                                              start_worker, monkeypatch):
    # Every attempt hits its soft time limit before its first step: handed back, again and again.
    # (1 s: the job process is still starting up then; it sees the stop before its first 30 s step.)
    monkeypatch.setenv("CONTINUUM_JOB_SOFT_TIME_LIMITS", json.dumps({"sleep": 1}))
    start_worker("poison")
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 10, "step_seconds": 30}, device="cpu")
    job = wait_for(lambda: (j := resources.ledger.get(job_id)).state in ("succeeded", "failed") and j, 180,
                   "the poison job to be dead-lettered")
    max_releases = resources.ledger.max_releases
    assert job.state == "failed" and "without progress" in job.error, job.error
    assert job.releases == max_releases and job.lease_token == max_releases
    runs = executions(resources.store, job_id)
    assert len(runs) == max_releases and all(r.get("stopped") == "requeue" and r["step"] == 0 for r in runs)
