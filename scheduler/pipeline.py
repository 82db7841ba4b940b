"""The pipeline: export → fisher → train → evaluate → promote, one `pipeline_runs` row whose steps are jobs.

Advancing is driven by events, not a long-lived coordinator: when a step's job finishes, the worker
calls `advance_pipeline`, which enqueues the next step with parameters taken from the previous steps'
results. Every move is idempotent — step jobs have unique keys (`pipeline:<run>:<step>:<try>`) and the
run's `current_step` moves by compare-and-set — so a duplicate advance (reaper + worker) is harmless.

Outcomes: `succeeded`; `skipped` when export found fewer than `pipeline_min_samples` new rows (nothing
trained); `failed`/`cancelled` with the failing step; a failed run resumes from its failed step.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Job, JobState, PipelineRun
from common.errors import NotFound, ValidationError
from common.ledger import utc_now
from common.settings import Settings

STEPS = ("export", "fisher", "train", "evaluate", "promote")
# Steps whose "skipped" result does not end the run (a first cycle has no adapter to take a Fisher of).
_OPTIONAL = {"fisher"}


def _insert_run(session: Session, values: dict[str, Any]):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(PipelineRun).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])


def schedule_key(schedule: str, tick: datetime) -> str:
    """The unique key of a scheduled run: two beats computing the same tick collide on it."""
    return f"schedule:{schedule}:{tick.isoformat()}"


def start_pipeline(
    settings: Settings,
    app: Celery,
    *,
    schedule: str | None = None,
    tick: datetime | None = None,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[PipelineRun, bool]:
    """Create the run (unless its key exists) and enqueue its first step. Returns (run, created)."""
    from workers.resources import resources_for

    if schedule is not None and tick is None:
        raise ValidationError("a scheduled pipeline run needs its tick")
    run_id = str(uuid.uuid4())
    key = schedule_key(schedule, tick) if schedule else (idempotency_key or f"manual:{run_id}")
    sessions = resources_for(settings).sessions
    with session_scope(sessions) as session:
        session.execute(_insert_run(session, dict(
            id=run_id, idempotency_key=key, schedule=schedule, tick=tick, state=JobState.running.value,
            current_step=STEPS[0], params=params or {}, created_at=utc_now(),
        )))
        run = session.scalars(select(PipelineRun).where(PipelineRun.idempotency_key == key)).one()
    created = run.id == run_id
    if created:
        _enqueue_step(settings, sessions, run, STEPS[0], attempt=0)
    return run, created


def _step_jobs(session: Session, run_id: str) -> dict[str, Job]:
    """The newest job of each step of the run."""
    latest: dict[str, Job] = {}
    for job in session.scalars(select(Job).where(Job.pipeline_run_id == run_id).order_by(Job.created_at)):
        latest[job.kind] = job
    return latest


def _step_params(settings: Settings, run: PipelineRun, step: str, done: dict[str, Job]) -> dict[str, Any]:
    """A step's job parameters, from the earlier steps' results (plus per-step overrides in run.params)."""
    result = {name: (job.result or {}) for name, job in done.items()}
    overrides = dict((run.params or {}).get("steps", {}).get(step, {}))
    if step == "export":
        return {"min_rows": settings.pipeline_min_samples, **overrides}
    dataset_id = result.get("export", {}).get("dataset_id")
    if step == "fisher":
        # The Fisher is for the train step that reads it: same recipe, overrides, lineage and parent
        # (train refuses a Fisher of another adapter or parameter space).
        train = (run.params or {}).get("steps", {}).get("train", {})
        inherited = {k: train[k] for k in ("recipe", "recipe_overrides", "adapter_name", "fresh") if k in train}
        if train.get("parent_adapter_id") is not None:
            inherited["adapter_id"] = train["parent_adapter_id"]
        return {**inherited, **overrides}
    if step == "train":
        fisher_id = result.get("fisher", {}).get("fisher_id")
        return {"dataset_id": dataset_id, **({"fisher_id": fisher_id} if fisher_id else {}), **overrides}
    if step == "evaluate":
        return {"adapter_id": result["train"]["adapter_id"], "dataset_id": dataset_id, **overrides}
    return {"evaluation_id": result["evaluate"]["evaluation_id"], **overrides}


def _enqueue_step(settings: Settings, sessions: sessionmaker[Session], run: PipelineRun, step: str, attempt: int) -> str:
    from scheduler.producer import enqueue_job

    with session_scope(sessions) as session:
        done = _step_jobs(session, run.id)
    return enqueue_job(
        settings,
        step,
        _step_params(settings, run, step, done),
        idempotency_key=f"pipeline:{run.id}:{step}:{attempt}",
        device=(run.params or {}).get("device", "auto"),
        pipeline_run_id=run.id,
    )


def _finish_run(sessions: sessionmaker[Session], run_id: str, from_step: str, state: JobState, error: str | None) -> bool:
    with session_scope(sessions) as session:
        return bool(session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.current_step == from_step,
                   PipelineRun.state == JobState.running.value)
            .values(state=state.value, error=error, finished_at=utc_now())
            .execution_options(synchronize_session=False)
        ).rowcount)


def advance_pipeline(settings: Settings, app: Celery | None, run_id: str) -> str:
    """Move the run on after its current step's job finished. Returns the run's state afterwards."""
    from workers.resources import resources_for

    sessions = resources_for(settings).sessions
    with session_scope(sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise NotFound(f"no pipeline run {run_id!r}: list them with `continuum pipeline list`")
        jobs = _step_jobs(session, run_id)
    step = run.current_step
    job = jobs.get(step)
    if run.state != JobState.running.value or job is None or not JobState(job.state).finished:
        return run.state
    state = JobState(job.state)
    if state in (JobState.failed, JobState.cancelled):
        _finish_run(sessions, run_id, step, state, f"{step}: {job.error}")
    elif state is JobState.skipped and step not in _OPTIONAL:
        reason = (job.result or {}).get("reason", "nothing to do")
        _finish_run(sessions, run_id, step, JobState.skipped, f"{step} skipped: {reason}")
    elif step == STEPS[-1]:
        _finish_run(sessions, run_id, step, JobState.succeeded, None)
    else:
        following = STEPS[STEPS.index(step) + 1]
        with session_scope(sessions) as session:
            moved = session.execute(
                update(PipelineRun)
                .where(PipelineRun.id == run_id, PipelineRun.current_step == step,
                       PipelineRun.state == JobState.running.value)
                .values(current_step=following)
                .execution_options(synchronize_session=False)
            ).rowcount
        if moved:
            _enqueue_step(settings, sessions, run, following, attempt=0)
    with session_scope(sessions) as session:
        return session.get(PipelineRun, run_id).state


def resume_pipeline(settings: Settings, run_id: str, step_params: dict[str, Any] | None = None) -> str:
    """Re-run a failed or cancelled run from its failed step (earlier steps' results are reused).

    `step_params` (e.g. a corrected parameter) are merged into that step's overrides first. Returns
    the new job id of the resumed step.
    """
    from workers.resources import resources_for

    sessions = resources_for(settings).sessions
    with session_scope(sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise NotFound(f"no pipeline run {run_id!r}: list them with `continuum pipeline list`")
        tries = sum(1 for job in session.scalars(select(Job).where(Job.pipeline_run_id == run_id))
                    if job.kind == run.current_step)
        params = dict(run.params or {})
        if step_params:
            steps = dict(params.get("steps", {}))
            steps[run.current_step] = {**steps.get(run.current_step, {}), **step_params}
            params["steps"] = steps
        moved = session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.state.in_([JobState.failed.value, JobState.cancelled.value]))
            .values(state=JobState.running.value, error=None, finished_at=None, params=params)
            .execution_options(synchronize_session=False)
        ).rowcount
    if not moved:
        raise ValidationError(f"pipeline run {run_id} is {run.state}; only failed or cancelled runs can be resumed")
    run.params = params
    return _enqueue_step(settings, sessions, run, run.current_step, attempt=tries)


def pipeline_status(settings: Settings, run_id: str) -> dict[str, Any]:
    """The run and its step jobs, as plain data (CLI `pipeline show`, `--wait` progress)."""
    from workers.resources import resources_for

    with session_scope(resources_for(settings).sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise NotFound(f"no pipeline run {run_id!r}: list them with `continuum pipeline list`")
        jobs = _step_jobs(session, run_id)
        return {
            "id": run.id, "state": run.state, "current_step": run.current_step, "schedule": run.schedule,
            "tick": run.tick, "error": run.error, "created_at": run.created_at, "finished_at": run.finished_at,
            "steps": {
                step: {"job_id": job.id, "state": job.state, "attempts": job.attempts, "progress": job.progress,
                       "result": job.result, "error": job.error}
                for step, job in ((s, jobs.get(s)) for s in STEPS) if job is not None
            },
        }
