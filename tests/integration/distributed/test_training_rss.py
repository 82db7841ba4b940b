"""Twenty REAL `train` jobs in a row on one worker: the worker (parent) process does not grow.

Each job trains the tiny model in its own child process, so the parent only claims, heartbeats,
streams progress and records results. A leak there (sessions, store clients, progress buffers, pipes,
zombie children) would show as RSS creeping up job after job; this test measures it on the real train
path (Postgres, Redis, S3-compatible server, real worker process), where the `sleep` diagnostic in
test_reliability.py cannot reach.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from common.db.engine import session_scope
from common.db.models import Adapter, Job
from scheduler.producer import enqueue_job
from tests.integration.distributed.harness import rss_bytes, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 20
WARM_UP = 5  # the first jobs fill caches and lazy imports in the parent; growth is measured after them
MAX_GROWTH = 8 * 2**20
# One optimiser step per job (8 facts, batch 8, one epoch), no checkpoints: each job is mostly the
# child's start-up, which is exactly the per-job work the parent does over and over.
TRAIN = {"epochs": 1, "batch_size": 8, "warmup_steps": 0, "max_length": 64, "checkpoint_every": 0,
         "log_every": 1, "cancel_check_every": 1}


@pytest.fixture
def dataset_id(dist_settings, resources, monkeypatch) -> int:
    """Eight invented facts exported into one dataset (the export job has its own tests)."""
    from common.feedback.importer import record_feedback_rows
    from workers.export import ExportConfig, export_feedback
    from workers.learning.synthetic import make_facts

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job children: 2 spinning threads on 2 busy cores crawl
    rows = [{"prompt": fact["prompt"], "response": fact["response"], "feedback": "thumbs_up"}
            for fact in make_facts(8, seed=11)]
    assert record_feedback_rows(resources.sessions, dist_settings, rows).inserted == 8
    result = export_feedback(resources.sessions, resources.store, ExportConfig.create(holdout_percent=0), "rss-export")
    assert result.status == "exported" and result.rows == 8
    return result.dataset_id


def _finished(resources, job_ids: list[str]) -> list[Job]:
    with session_scope(resources.sessions) as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids), Job.finished_at.is_not(None)))
        return sorted(jobs, key=lambda job: job.finished_at)


def test_twenty_training_jobs_keep_worker_rss_flat(dist_settings, resources, start_worker, dataset_id):
    started = time.monotonic()
    worker = start_worker("trainer")
    # naive: one optimiser step per job (the default recipe would also mix in self-replay rows).
    params = {"dataset_id": dataset_id, "fresh": True, "train": TRAIN, "recipe": "naive"}
    # All queued up front: the worker (prefetch 1) takes them strictly one after another.
    job_ids = [enqueue_job(dist_settings, "train", params, device="cpu") for _ in range(JOBS)]
    samples: list[int] = []

    def sample_per_finished_job() -> bool:
        done = len(_finished(resources, job_ids))
        while len(samples) < done:  # one sample per finished job, taken right after it finished
            samples.append(rss_bytes(worker.pid))
        return done == JOBS

    wait_for(sample_per_finished_job, 600, f"{JOBS} train jobs to finish", interval=0.05)
    elapsed = time.monotonic() - started

    jobs = _finished(resources, job_ids)
    assert [job.state for job in jobs] == ["succeeded"] * JOBS, [(job.state, job.error) for job in jobs]
    with session_scope(resources.sessions) as session:
        adapters = list(session.scalars(select(Adapter).where(Adapter.job_id.in_(job_ids))))
        assert session.scalar(select(func.count()).select_from(Adapter)) == JOBS
    assert sorted(adapter.job_id for adapter in adapters) == sorted(job_ids)
    assert all(adapter.metadata_["train"]["steps"] == 1 for adapter in adapters)

    mib = [round(sample / 2**20, 1) for sample in samples]
    job_s = [round((job.finished_at - job.started_at).total_seconds(), 2) for job in jobs]
    fit_by_job = {adapter.job_id: adapter.metadata_["train"]["wall_s"] for adapter in adapters}
    fit_s = [round(fit_by_job[job.id], 2) for job in jobs]
    print(f"\nworker RSS MiB after each of {JOBS} train jobs: {mib}")
    print(f"growth job {WARM_UP}→{JOBS}: {(samples[-1] - samples[WARM_UP - 1]) / 2**20:.2f} MiB; "
          f"job {1}→{JOBS}: {(samples[-1] - samples[0]) / 2**20:.2f} MiB")
    print(f"job wall s (started→finished): {job_s}")
    print(f"fit() wall s inside the child: {fit_s}")
    print(f"{JOBS} train jobs in {elapsed:.1f}s (worker start included)")
    assert samples[-1] - samples[WARM_UP - 1] < MAX_GROWTH, mib
