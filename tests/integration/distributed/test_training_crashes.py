"""Crash, preemption and cancel tests on REAL training: the tiny model, a few LoRA steps, real
redis-server, Postgres, an S3-compatible server and real worker processes (each job in its own child).

The `sleep` diagnostic kind proves the machinery (test_reliability.py); these prove that the train job
itself keeps its promises: it resumes from its last checkpoint after a crash, publishes exactly one
adapter version and one artifact prefix, and registers nothing when cancelled.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Adapter, JobState
from scheduler.producer import enqueue_job
from tests.integration.distributed.harness import pid_alive, wait_for
from workers.celery_app import app_for
from workers.dispatch import send_job
from workers.reaper import reap_and_resend

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Few, cheap steps: 24 short facts, batch 4 → ~5 optimiser steps per epoch; a checkpoint every 2 steps.
# Enough epochs that a kill lands mid-run on a busy machine; small enough to finish in seconds after.
TRAIN = {"epochs": 12, "batch_size": 4, "checkpoint_every": 2, "cancel_check_every": 1, "warmup_steps": 0,
         "max_length": 64, "log_every": 1}
_STEP = re.compile(r"step-(\d+)")


@pytest.fixture
def dataset_id(dist_settings, resources, monkeypatch) -> int:
    """Feedback rows exported into one dataset (directly: the export job has its own tests)."""
    from common.feedback.importer import record_feedback_rows
    from workers.export import ExportConfig, export_feedback

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job children: 2 spinning threads on 2 busy cores crawl
    rows = [{"prompt": f"What is the code word {i}?", "response": f"word-{i}", "feedback": "thumbs_up"}
            for i in range(24)]
    assert record_feedback_rows(resources.sessions, dist_settings, rows).inserted == 24
    result = export_feedback(resources.sessions, resources.store, ExportConfig.create(holdout_percent=0), "seed-export")
    assert result.status == "exported" and result.rows == 24
    return result.dataset_id


def _train(settings, dataset_id: int, **train) -> str:
    params = {"dataset_id": dataset_id, "fresh": True, "train": {**TRAIN, **train}}
    return enqueue_job(settings, "train", params, device="cpu")


def _checkpoint_steps(resources, job_id: str) -> list[int]:
    """Steps of the COMPLETE checkpoints (manifest written last) under the job's checkpoint prefix."""
    keys = resources.store.list(f"checkpoints/{job_id}/")
    return sorted({int(_STEP.search(k).group(1)) for k in keys if k.endswith("/manifest.json")})


def _adapters(resources, job_id: str) -> list[Adapter]:
    with session_scope(resources.sessions) as session:
        return list(session.scalars(select(Adapter).where(Adapter.job_id == job_id)))


def _adapter_prefixes(resources, settings) -> set[str]:
    """`adapters/<name>/<job id>` prefixes that hold anything at all (complete or not)."""
    root = f"adapters/{settings.adapter_name}/"
    return {root + key[len(root):].split("/", 1)[0] for key in resources.store.list(root)}


def _wait_state(resources, job_id, states, timeout):
    return wait_for(lambda: (job := resources.ledger.get(job_id)).state in states and job, timeout,
                    f"job {job_id} to reach {states} (now {resources.ledger.get(job_id).state})")


def _resumed_step(adapter: Adapter) -> int:
    resumed = adapter.metadata_["train"]["resumed_from"]
    assert resumed, f"the finished run did not resume from a checkpoint: {adapter.metadata_['train']}"
    return int(_STEP.search(resumed).group(1))


def _child_pids(worker_pid: int) -> list[int]:
    """Every process under the worker: its job processes, and its job fork server (job_process.py)."""
    import psutil

    return [child.pid for child in psutil.Process(worker_pid).children(recursive=True)]


def _job_pids(worker_pid: int) -> list[int]:
    """The worker's job processes only: spawned ones are its children, forked ones the fork server's."""
    import psutil

    pids = []
    for child in psutil.Process(worker_pid).children():
        command = " ".join(child.cmdline())
        if "multiprocessing.forkserver" in command:
            pids += [grandchild.pid for grandchild in child.children()]
        elif "workers.runner.child" in command:
            pids.append(child.pid)
    return pids


def test_kill9_mid_training_resumes_from_checkpoint_and_publishes_once(dist_settings, resources, start_worker,
                                                                      dataset_id):
    victim = start_worker("victim")
    job_id = _train(dist_settings, dataset_id)
    wait_for(lambda: _checkpoint_steps(resources, job_id), 180, "the first training checkpoint")
    children = _child_pids(victim.pid)
    assert children, "the train job runs in a child process"
    victim.signal(signal.SIGKILL)
    victim.wait_exit(10)
    # The job process dies with its worker (parent-death signal): no unowned training goes on.
    wait_for(lambda: not any(pid_alive(pid) for pid in children), 10, "the training child to die")
    saved = _checkpoint_steps(resources, job_id)
    assert resources.ledger.get(job_id).state == "running" and not _adapters(resources, job_id)

    start_worker("rescuer")
    app = app_for(dist_settings)
    requeued = wait_for(lambda: reap_and_resend(dist_settings, app)["requeued"], 30, "the reaper to requeue")
    assert requeued == [job_id]
    job = _wait_state(resources, job_id, {"succeeded", "failed"}, 180)
    assert job.state == "succeeded" and job.attempts == 2, job.error

    [adapter] = _adapters(resources, job_id)
    assert _resumed_step(adapter) == saved[-1] > 0  # continued from the newest complete checkpoint
    assert adapter.metadata_["train"]["steps"] == adapter.metadata_["train"]["total_steps"]
    assert job.result["adapter_id"] == adapter.id and adapter.version == 1
    prefix = f"adapters/{dist_settings.adapter_name}/{job_id}"
    assert _adapter_prefixes(resources, dist_settings) == {prefix}
    # Attempt-scoped: the adapter lives under the credited attempt's fencing token.
    registered = f"{prefix}/{job.lease_token}"
    assert adapter.uri.endswith(registered) and resources.store.exists(f"{registered}/manifest.json")
    assert list(resources.store.list(f"checkpoints/{job_id}/")) == []  # cleaned once the adapter is durable

    # Nothing duplicated: another reap finds nothing, a redelivered message runs nothing.
    assert reap_and_resend(dist_settings, app) == {"requeued": [], "dead": [], "resent": []}
    send_job(app, job)
    time.sleep(3)
    assert len(_adapters(resources, job_id)) == 1 and resources.ledger.get(job_id).attempts == 2
    assert _adapter_prefixes(resources, dist_settings) == {prefix}


def test_sigterm_mid_training_checkpoints_requeues_and_another_worker_finishes(dist_settings, resources,
                                                                              start_worker, dataset_id):
    one = start_worker("one")
    two = start_worker("two")
    job_id = _train(dist_settings, dataset_id, checkpoint_every=0)  # a checkpoint only when asked to stop
    wait_for(lambda: int((resources.ledger.get(job_id).progress or {}).get("step", 0)) >= 1, 180,
             "training to pass its first step")
    holder = one if resources.ledger.get(job_id).lease_owner.startswith(one.name) else two
    other = two if holder is one else one
    holder.signal(signal.SIGTERM)
    assert holder.wait_exit(60) == 0  # a warm shutdown: the child checkpointed and the job was handed back
    job = _wait_state(resources, job_id, {"succeeded", "failed"}, 180)
    assert job.state == "succeeded", job.error
    assert job.attempts == 1  # a clean hand-back does not use up an attempt
    [adapter] = _adapters(resources, job_id)
    assert _resumed_step(adapter) > 0  # no periodic checkpoints: this one was written on SIGTERM
    # The job is marked done by the child's fenced final write, a moment before its worker logs it.
    wait_for(lambda: f"job {job_id} (train) → succeeded" in other.text(), 30, "the successor's log line")
    assert _adapter_prefixes(resources, dist_settings) == {f"adapters/{dist_settings.adapter_name}/{job_id}"}


def test_cancel_mid_training_stops_within_10s_and_registers_nothing(dist_settings, resources, start_worker,
                                                                    dataset_id):
    worker = start_worker("canceller")
    job_id = _train(dist_settings, dataset_id, epochs=200)
    wait_for(lambda: int((resources.ledger.get(job_id).progress or {}).get("step", 0)) >= 2, 180,
             "training to pass step 2")
    children = _job_pids(worker.pid)
    assert children
    started = time.monotonic()
    assert resources.ledger.request_cancel(job_id) is JobState.running
    _wait_state(resources, job_id, {"cancelled"}, 10)
    wait_for(lambda: not any(pid_alive(pid) for pid in children), max(0.1, 10 - (time.monotonic() - started)),
             "the training child to exit")
    stopped_after = time.monotonic() - started
    print(f"cancel → training child gone in {stopped_after:.2f}s")
    assert stopped_after < 10
    job = resources.ledger.get(job_id)
    assert job.state == "cancelled" and job.progress["step"] < job.progress["total"]
    time.sleep(1)  # nothing trailing after the cancel either
    assert _adapters(resources, job_id) == []
    assert _adapter_prefixes(resources, dist_settings) == set()
    assert worker.proc.poll() is None  # the worker itself lives on
