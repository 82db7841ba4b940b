"""Crash and preemption tests with real redis-server, Postgres, an S3-compatible server and real
worker processes. The job is the `sleep` diagnostic kind: a subprocess job that checkpoints after
every step to the object store and records each execution (pid, start, end)."""

from __future__ import annotations

import signal
import time

import pytest

from common.db.models import JobState
from scheduler.producer import enqueue_job
from tests.integration.distributed.harness import pid_alive, rss_bytes, wait_for
from workers.celery_app import app_for
from workers.diagnostics.sleep import executions
from workers.dispatch import send_job
from workers.reaper import reap_and_resend

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _job(resources, job_id):
    return resources.ledger.get(job_id)


def _step(resources, job_id) -> int:
    return int((_job(resources, job_id).progress or {}).get("step", 0))


def _wait_state(resources, job_id, states, timeout):
    return wait_for(lambda: _job(resources, job_id).state in states and _job(resources, job_id), timeout,
                    f"job {job_id} to reach {states} (now {_job(resources, job_id).state})")


def test_kill9_worker_mid_job_is_reaped_once_resumes_and_completes(dist_settings, resources, start_worker):
    first = start_worker("victim")
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 16, "step_seconds": 0.25}, device="cpu")
    wait_for(lambda: _step(resources, job_id) >= 4, 60, "progress past step 4")
    child_pid = executions(resources.store, job_id)[0]["pid"]
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    # The job process dies with its worker (parent-death signal): it never runs on, unowned.
    wait_for(lambda: not pid_alive(child_pid), 5, "the orphaned job process to die")
    step_at_kill = _step(resources, job_id)

    start_worker("rescuer")
    app = app_for(dist_settings)
    requeued = wait_for(lambda: reap_and_resend(dist_settings, app)["requeued"], 30, "the reaper to requeue")
    assert requeued == [job_id]
    job = _wait_state(resources, job_id, {"succeeded", "failed"}, 60)
    assert job.state == "succeeded" and job.attempts == 2
    runs = executions(resources.store, job_id)
    assert len(runs) == 2 and runs[0]["end"] is None  # killed mid-run, then one resumed run
    assert runs[1]["resumed_from"] >= step_at_kill - 1 > 0  # resumed from its checkpoint, not from 0
    assert runs[1]["start"] > runs[0]["start"] and job.result["resumed_from"] == runs[1]["resumed_from"]
    # Nothing duplicated: a second reap finds nothing; re-sending the message runs nothing.
    assert reap_and_resend(dist_settings, app) == {"requeued": [], "dead": [], "resent": []}
    send_job(app, job)
    time.sleep(2)
    assert len(executions(resources.store, job_id)) == 2 and _job(resources, job_id).attempts == 2


def test_sigterm_mid_job_checkpoints_requeues_and_another_worker_finishes(dist_settings, resources, start_worker):
    one = start_worker("one")
    two = start_worker("two")
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 24, "step_seconds": 0.25}, device="cpu")
    wait_for(lambda: _step(resources, job_id) >= 3, 60, "progress past step 3")
    holder = one if _job(resources, job_id).lease_owner.startswith(one.name) else two
    other = two if holder is one else one
    holder.signal(signal.SIGTERM)
    assert holder.wait_exit(30) == 0  # a clean, warm shutdown
    job = _wait_state(resources, job_id, {"succeeded", "failed"}, 60)
    assert job.state == "succeeded"
    runs = executions(resources.store, job_id)
    assert [r.get("stopped") for r in runs] == ["requeue", None]
    assert runs[1]["resumed_from"] == runs[0]["step"] >= 3  # resumed exactly where it checkpointed
    assert runs[1]["start"] >= runs[0]["end"]  # never two executions at once
    assert job.attempts == 1  # a clean hand-back does not use up an attempt
    assert other.name in other.text() and f"job {job_id} (sleep) → succeeded" in other.text()


def test_job_outliving_the_visibility_timeout_never_runs_twice_at_once(dist_settings, resources, start_worker):
    workers = [start_worker(name, app_module="tests.integration.distributed.short_visibility_app")
               for name in ("vt1", "vt2")]
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 20, "step_seconds": 0.4}, device="cpu")
    job = _wait_state(resources, job_id, {"succeeded", "failed"}, 90)
    assert job.state == "succeeded" and job.attempts == 1
    runs = executions(resources.store, job_id)
    assert len(runs) == 1 and runs[0]["resumed_from"] == 0
    logs = "".join(w.text() for w in workers)
    # Redis did redeliver the unacked message (visibility timeout 2 s < 8 s job)…
    assert logs.count("Task continuum.sleep[") >= 2 * 2  # received + finished lines, two deliveries
    # …and the ledger turned the second delivery away while the lease was live.
    assert f"job {job_id} not run: busy" in logs


def test_redis_restart_mid_run_loses_no_queued_job(dist_settings, resources, start_worker, redis_server):
    start_worker("steady")
    job_ids = [enqueue_job(dist_settings, "sleep", {"steps": 3, "step_seconds": 0.1}, device="cpu") for _ in range(8)]
    wait_for(lambda: any(_job(resources, j).state == "succeeded" for j in job_ids), 60, "the first job to finish")
    time.sleep(1.5)  # appendfsync everysec: let the AOF catch up with the last publishes
    redis_server.restart()
    restarted = time.monotonic()
    # No reaper here: the queued messages themselves must survive the restart.
    wait_for(lambda: all(_job(resources, j).state == "succeeded" for j in job_ids), 120,
             "every job to finish after the restart")
    print(f"all 8 jobs done {time.monotonic() - restarted:.1f}s after the Redis restart")
    assert all(_job(resources, j).attempts == 1 for j in job_ids)


def test_job_that_always_crashes_is_tried_n_times_then_stays_failed(dist_settings, resources, start_worker):
    start_worker("crashy")
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 6, "step_seconds": 0.05, "crash": "always",
                                                  "crash_at_step": 2}, device="cpu", max_attempts=3)
    job = _wait_state(resources, job_id, {"failed", "succeeded"}, 90)
    assert job.state == "failed" and job.attempts == 3
    assert "gave up after 3 attempts" in job.error and "SIGKILL" in job.error
    assert len(executions(resources.store, job_id)) == 3
    # Dead letter: a redelivered message and the reaper both leave it alone.
    app = app_for(dist_settings)
    send_job(app, job)
    assert reap_and_resend(dist_settings, app) == {"requeued": [], "dead": [], "resent": []}
    time.sleep(2)
    assert _job(resources, job_id).state == "failed" and len(executions(resources.store, job_id)) == 3


def test_cancel_mid_job_stops_the_child_within_10_seconds(dist_settings, resources, start_worker):
    start_worker("canceller")
    job_id = enqueue_job(dist_settings, "sleep", {"steps": 400, "step_seconds": 0.1}, device="cpu")
    wait_for(lambda: _step(resources, job_id) >= 2, 60, "progress past step 2")
    child_pid = executions(resources.store, job_id)[0]["pid"]
    started = time.monotonic()
    assert resources.ledger.request_cancel(job_id) is JobState.running
    _wait_state(resources, job_id, {"cancelled"}, 10)
    wait_for(lambda: not pid_alive(child_pid), 10 - (time.monotonic() - started), "the job process to exit")
    stopped_after = time.monotonic() - started
    assert stopped_after < 10
    job = _job(resources, job_id)
    assert job.state == "cancelled" and job.progress["step"] < 400
    print(f"cancel → child gone in {stopped_after:.2f}s")


def test_twenty_jobs_in_a_row_keep_worker_rss_flat(dist_settings, resources, start_worker):
    worker = start_worker("longrun")
    job_ids = [enqueue_job(dist_settings, "sleep", {"steps": 2, "step_seconds": 0.05}, device="cpu")
               for _ in range(20)]
    samples: list[int] = []

    def sample_per_finished_job() -> bool:
        done = sum(_job(resources, j).state == "succeeded" for j in job_ids)
        while len(samples) < done:
            samples.append(rss_bytes(worker.pid))
        return done == len(job_ids)

    wait_for(sample_per_finished_job, 180, "20 jobs to finish", interval=0.05)
    mib = [round(s / 2**20, 1) for s in samples]
    print(f"worker RSS MiB after each of 20 jobs: {mib}")
    # After warm-up (first 5 jobs), growth over the next 15 jobs stays under 8 MiB.
    assert samples[-1] - samples[4] < 8 * 2**20, mib
