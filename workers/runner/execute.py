"""The body of every job task: claim the ledger row, run the job, record how it ended.

This is the one place that maps an outcome to a ledger transition and decides whether the job's
message is sent again (retry, requeue). A message for a job that cannot be claimed (running under a
live lease, finished, cancelled, out of attempts) is acknowledged and does nothing else.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

from celery import Celery, Task

from common.db.models import JobState
from common.ledger import JobLedger
from common.settings import Settings
from workers.context import JobContext
from workers.dispatch import send_job
from workers.kinds import JobKind, job_kind, load_entry
from workers.resources import resources_for
from workers.runner.inline_runner import run_inline
from workers.runner.outcome import Outcome, OutcomeKind, Supervision
from workers.runner.subprocess_runner import run_in_subprocess

log = logging.getLogger("continuum.runner")

# Set by the worker_shutting_down signal (wired in workers.celery_app); read by running jobs.
shutdown_requested = threading.Event()


def worker_is_shutting_down() -> bool:
    from celery.worker import state

    return shutdown_requested.is_set() or bool(state.should_stop) or bool(state.should_terminate)


def soft_time_limit(settings: Settings, kind: str) -> int:
    return int(settings.job_soft_time_limits.get(kind, 3600))


def hard_time_limit(settings: Settings, kind: str) -> int:
    return soft_time_limit(settings, kind) + settings.job_hard_time_limit_grace_seconds


class _ProgressPublisher:
    """Progress → Celery `task-progress` events (Flower) and the result backend, if one is set."""

    def __init__(self, task: Task, job_id: str):
        self.app: Celery = task.app
        self.task_id = task.request.id
        self.hostname = task.request.hostname
        self.job_id = job_id
        self.use_backend = self.app.conf.result_backend is not None
        self.task = task

    def __call__(self, progress: dict[str, Any]) -> None:
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                dispatcher.send("task-progress", uuid=self.task_id, job_id=self.job_id, progress=progress)
            if self.use_backend and self.task_id:
                self.app.backend.store_result(self.task_id, {"job_id": self.job_id, **progress}, "PROGRESS")
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the ledger has it anyway
            log.debug("progress event for %s not sent: %s", self.job_id, exc)


def execute_job(task: Task, job_id: str, kind: str | None = None, queue: str | None = None) -> dict[str, Any]:
    """Claim, run and record one job. Returns a small JSON summary (the ledger holds the truth).

    `kind`/`queue` are the claiming task's and the queue the message came from: a job of another kind
    or queue is not claimed (outcome `refused`) and nothing about it changes."""
    settings: Settings = task.app.continuum_settings
    resources = resources_for(settings)
    ledger = resources.ledger
    owner = f"{task.request.hostname or 'local'}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    claim = ledger.claim(job_id, owner, settings.job_lease_seconds, kind=kind, queue=queue)
    if not claim.ok:
        log.info("job %s not run: %s", job_id, claim.outcome.value)
        return {"job_id": job_id, "ran": False, "claim": claim.outcome.value}
    job = claim.job
    token = claim.token  # the fencing token: the job's final write must still hold it
    kind = job_kind(job.kind)
    supervision = Supervision(
        heartbeat=lambda progress: ledger.heartbeat(job_id, owner, settings.job_lease_seconds, progress, token=token),
        publish_progress=_ProgressPublisher(task, job_id),
        shutting_down=worker_is_shutting_down,
        heartbeat_seconds=settings.job_heartbeat_seconds,
        soft_time_limit=soft_time_limit(settings, kind.name),
        hard_time_limit=hard_time_limit(settings, kind.name),
        stop_grace_seconds=settings.child_stop_grace_seconds,
        lease_owner=owner,
        lease_token=token,
        lease_seconds=settings.job_lease_seconds,
    )
    log.info("job %s (%s) attempt %d/%d claimed by %s", job_id, kind.name, job.attempts, job.max_attempts, owner)
    outcome = _run(kind, job_id, dict(job.params or {}), settings, supervision)
    state = record_outcome(task.app, ledger, job_id, owner, outcome, token=token,
                           made_progress=_made_progress(job.progress, outcome.progress))
    if outcome.startup_seconds is not None:
        # Up to the job's code loaded: with torch not preloaded (spawn) its imports still follow.
        log.info("job %s (%s) process (%s) ready in %.2fs, torch preloaded: %s", job_id, kind.name,
                 outcome.start_method, outcome.startup_seconds, "yes" if outcome.code_preloaded else "no")
    log.info("job %s (%s) → %s %s", job_id, kind.name, state, outcome.error)
    if job.pipeline_run_id and state != "lease_lost":
        from common.orchestration.pipeline import advance_pipeline  # lazy: only pipeline steps need it
        from workers.dispatch import orchestrator_for

        advance_pipeline(orchestrator_for(settings, task.app), job.pipeline_run_id)
    return {"job_id": job_id, "ran": True, "state": state}


def _run(kind: JobKind, job_id: str, params: dict[str, Any], settings: Settings, supervision: Supervision) -> Outcome:
    if kind.isolation == "process":
        return run_in_subprocess(job_id, supervision, settings.job_process_start)
    resources = resources_for(settings)
    context = JobContext(settings=settings, sessions=resources.sessions, store=resources.store,
                         job_id=job_id, params=params, lease_owner=supervision.lease_owner,
                         lease_token=supervision.lease_token, ledger=resources.ledger)
    try:
        run = load_entry(kind)
    except Exception as exc:  # noqa: BLE001 - a broken install fails the job with the reason
        return Outcome(OutcomeKind.failed, error=f"cannot load {kind.entry}: {exc}", retryable=False)
    return run_inline(context, run, supervision)


def _made_progress(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    """Did this attempt get further than any attempt before it? (A release without progress counts
    towards dead-lettering a poison job.) Jobs that report no step count any report as progress."""
    if not after:
        return False
    step_after, step_before = after.get("step"), (before or {}).get("step")
    if isinstance(step_after, (int, float)) and isinstance(step_before, (int, float)):
        return step_after > step_before
    return True


def record_outcome(app: Celery, ledger: JobLedger, job_id: str, owner: str, outcome: Outcome,
                   token: int | None = None, made_progress: bool = True) -> str:
    """Apply `outcome` to the ledger (guarded by the lease) and re-send the message when it goes back
    to the queue. Returns the job's state afterwards, or "lease_lost" when this attempt's outcome was
    refused (so a worker never logs "succeeded" for a write the lease refused)."""
    if outcome.kind is OutcomeKind.lease_lost:
        return "lease_lost"
    if outcome.kind is OutcomeKind.succeeded:
        # Logic reports "nothing to do" as {"status": "skipped"} (or {"skipped": true}).
        skipped = outcome.result.get("status") == "skipped" or bool(outcome.result.get("skipped"))
        state = JobState.skipped if skipped else JobState.succeeded
        if ledger.succeed(job_id, owner, outcome.result, state=state, token=token):
            return state.value  # the common path: no read-back round trip
        # Refused: either the job's own fenced final write already finished it under our token (the
        # usual case for jobs that register an artifact), or our lease is gone / a cancel came first.
        ours = ledger.finished_with(job_id, token) if token is not None else None
        if ours is not None:
            return ours.value
        if ledger.cancel_if_requested(job_id, owner):
            return JobState.cancelled.value
        return "lease_lost"
    elif outcome.kind is OutcomeKind.cancelled:
        ledger.mark_cancelled(job_id, owner)
    elif outcome.kind is OutcomeKind.requeue:
        if ledger.release(job_id, owner, outcome.error, made_progress=made_progress, token=token):
            send_job(app, ledger.get(job_id))
    else:
        if ledger.fail(job_id, owner, outcome.error, retryable=outcome.retryable) is JobState.queued:
            send_job(app, ledger.get(job_id))
    return ledger.get(job_id).state
