"""The pipeline state machine: export → fisher → train → evaluate → promote, one `pipeline_runs` row
whose steps are jobs.

Advancing is driven by events: when a step's job finishes, the worker calls `advance_pipeline`, which
enqueues the next step with parameters taken from the previous steps' results. Events can be lost (a
process dies between two writes, a queued step is cancelled), so the reconciliation sweep
(`common.orchestration.reconcile`) calls the same functions for every run that stopped moving. Every
move is idempotent — step jobs have unique keys (`pipeline:<run>:<step>:<try>`) and the run's
`current_step` moves by compare-and-set — so a duplicate advance (worker + sweep) is harmless.

Outcomes: `succeeded`; `skipped` when export found fewer than `pipeline_min_samples` new rows (nothing
trained); `failed`/`cancelled` with the failing step; a failed, cancelled or stalled run resumes from
its current step.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db.engine import session_scope
from common.db.models import Job, JobState, PipelineRun
from common.errors import NotFound, ValidationError
from common.ledger import utc_now
from common.orchestration.context import Orchestrator
from common.orchestration.enqueue import enqueue_job

STEPS = ("export", "fisher", "train", "evaluate", "promote")
# A run follows one plan (`params["plan"]`, default "feedback"): what the cycle learns from decides its
# first step; everything after it — the Fisher, training, the gate — is the same machinery.
PLANS: dict[str, tuple[str, ...]] = {
    "feedback": STEPS,
    # `calibrate` measures sparse memory's unit statistics (skipped for other strategies).
    "documents": ("ingest", "calibrate", "fisher", "train", "evaluate", "promote"),
}
ALL_STEPS = ("export", "ingest", "calibrate", "fisher", "train", "evaluate", "promote")


def steps_of(run: PipelineRun) -> tuple[str, ...]:
    """The run's steps in order (its plan's)."""
    plan = (run.params or {}).get("plan", "feedback")
    if plan not in PLANS:
        raise ValidationError(f"unknown pipeline plan {plan!r}; one of {', '.join(PLANS)}")
    return PLANS[plan]
# Steps whose "skipped" result does not end the run (a first cycle has no adapter to take a Fisher of).
_OPTIONAL = {"fisher", "calibrate"}
_LIVE = (JobState.queued.value, JobState.running.value)


def _insert_run(session: Session, values: dict[str, Any]):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(PipelineRun).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])


def schedule_key(schedule: str, tick: datetime) -> str:
    """The unique key of a scheduled run: two beats computing the same tick collide on it."""
    return f"schedule:{schedule}:{tick.isoformat()}"


def _not_found(run_id: str) -> NotFound:
    return NotFound(f"no pipeline run {run_id!r}: list them with `continuum pipeline list`")


def start_pipeline(
    orch: Orchestrator,
    *,
    schedule: str | None = None,
    tick: datetime | None = None,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[PipelineRun, bool]:
    """Create the run (unless its key exists) and enqueue its first step. Returns (run, created).

    If the process dies between the two, the sweep enqueues the first step after its grace period.
    """
    if schedule is not None and tick is None:
        raise ValidationError("a scheduled pipeline run needs its tick")
    run_id = str(uuid.uuid4())
    key = schedule_key(schedule, tick) if schedule else (idempotency_key or f"manual:{run_id}")
    plan = (params or {}).get("plan", "feedback")
    if plan not in PLANS:
        raise ValidationError(f"unknown pipeline plan {plan!r}; one of {', '.join(PLANS)}")
    with session_scope(orch.sessions) as session:
        run = insert_pipeline_run(session, run_id, key, params or {}, first_step=PLANS[plan][0], schedule=schedule,
                                  tick=tick)
    created = run.id == run_id
    if created:
        enqueue_step(orch, run, run.current_step, attempt=0)
    return run, created


def insert_pipeline_run(session: Session, run_id: str, key: str, params: dict[str, Any], *,
                        first_step: str = STEPS[0], schedule: str | None = None,
                        tick: datetime | None = None) -> PipelineRun:
    """Insert a run at `first_step` inside the caller's transaction (unless its key exists); returns the
    run holding the key. The caller enqueues the first step after the commit (`enqueue_step`), or
    leaves it to the sweep.

    A run may start after `export`: an online version (`workers/online/publish.py`) starts at
    `evaluate`, its adapter and dataset in `params["steps"]["evaluate"]`, and goes through the same
    evaluate → promote gate as a batch cycle.
    """
    if first_step not in ALL_STEPS:
        raise ValidationError(f"unknown pipeline step {first_step!r}; one of {', '.join(ALL_STEPS)}")
    session.execute(_insert_run(session, dict(
        id=run_id, idempotency_key=key, schedule=schedule, tick=tick, state=JobState.running.value,
        current_step=first_step, params=params, created_at=utc_now(),
    )))
    return session.scalars(select(PipelineRun).where(PipelineRun.idempotency_key == key)).one()


def step_jobs(session: Session, run_id: str) -> dict[str, Job]:
    """The newest job of each step of the run."""
    latest: dict[str, Job] = {}
    for job in session.scalars(select(Job).where(Job.pipeline_run_id == run_id).order_by(Job.created_at)):
        latest[job.kind] = job
    return latest


def _step_params(orch: Orchestrator, run: PipelineRun, step: str, done: dict[str, Job]) -> dict[str, Any]:
    """A step's job parameters, from the earlier steps' results (plus per-step overrides in run.params)."""
    result = {name: (job.result or {}) for name, job in done.items()}
    overrides = dict((run.params or {}).get("steps", {}).get(step, {}))
    if step == "export":
        return {"min_rows": orch.settings.pipeline_min_samples, **overrides}
    if step == "ingest":
        return overrides
    dataset_id = result.get("export", result.get("ingest", {})).get("dataset_id")
    if step == "fisher":
        # The Fisher is for the train step that reads it: same recipe, overrides, lineage and parent
        # (train refuses a Fisher of another adapter or parameter space).
        train = (run.params or {}).get("steps", {}).get("train", {})
        inherited = {k: train[k] for k in ("recipe", "recipe_overrides", "adapter_name", "fresh") if k in train}
        if train.get("parent_adapter_id") is not None:
            inherited["adapter_id"] = train["parent_adapter_id"]
        return {**inherited, **overrides}
    if step == "calibrate":
        # For the train step that reads it: same strategy, options and lineage.
        train = (run.params or {}).get("steps", {}).get("train", {})
        inherited = {k: train[k] for k in ("strategy", "strategy_options", "adapter_name") if k in train}
        return {**inherited, **overrides}
    if step == "train":
        ids = {"fisher_id": result.get("fisher", {}).get("fisher_id"),
               "calibration_id": result.get("calibrate", {}).get("calibration_id")}
        return {"dataset_id": dataset_id, **{k: v for k, v in ids.items() if v}, **overrides}
    if step == "evaluate":
        # A run that starts here (an online version) names its adapter and dataset in the overrides.
        trained = {k: v for k, v in (("adapter_id", result.get("train", {}).get("adapter_id")),
                                     ("dataset_id", dataset_id)) if v is not None}
        return {**trained, **overrides}
    return {"evaluation_id": result["evaluate"]["evaluation_id"], **overrides}


def enqueue_step(orch: Orchestrator, run: PipelineRun, step: str, attempt: int) -> str:
    """Create and send the job of `step` (try `attempt`); the key makes a repeat return the same job."""
    with session_scope(orch.sessions) as session:
        done = step_jobs(session, run.id)
    return enqueue_job(
        orch,
        step,
        _step_params(orch, run, step, done),
        idempotency_key=f"pipeline:{run.id}:{step}:{attempt}",
        device=(run.params or {}).get("device", "auto"),
        pipeline_run_id=run.id,
    )


def _finish_run(orch: Orchestrator, run_id: str, from_step: str, state: JobState, error: str | None) -> bool:
    with session_scope(orch.sessions) as session:
        return bool(session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.current_step == from_step,
                   PipelineRun.state == JobState.running.value)
            .values(state=state.value, error=error, finished_at=utc_now())
            .execution_options(synchronize_session=False)
        ).rowcount)


def _run_state(orch: Orchestrator, run_id: str) -> str:
    with session_scope(orch.sessions) as session:
        return session.get(PipelineRun, run_id).state


def advance_pipeline(orch: Orchestrator, run_id: str) -> str:
    """Move the run on after its current step's job finished. Returns the run's state afterwards."""
    with session_scope(orch.sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise _not_found(run_id)
        jobs = step_jobs(session, run_id)
    step = run.current_step
    job = jobs.get(step)
    if run.state != JobState.running.value or job is None or not JobState(job.state).finished:
        return run.state
    state = JobState(job.state)
    if state in (JobState.failed, JobState.cancelled):
        _finish_run(orch, run_id, step, state, f"{step}: {job.error}")
    elif state is JobState.skipped and step not in _OPTIONAL:
        reason = (job.result or {}).get("reason", "nothing to do")
        _finish_run(orch, run_id, step, JobState.skipped, f"{step} skipped: {reason}")
    elif step == steps_of(run)[-1]:
        _finish_run(orch, run_id, step, JobState.succeeded, None)
    else:
        plan = steps_of(run)
        following = plan[plan.index(step) + 1]
        with session_scope(orch.sessions) as session:
            moved = session.execute(
                update(PipelineRun)
                .where(PipelineRun.id == run_id, PipelineRun.current_step == step,
                       PipelineRun.state == JobState.running.value)
                .values(current_step=following)
                .execution_options(synchronize_session=False)
            ).rowcount
        if moved:
            # A crash right here leaves the run on `following` with no job: the sweep enqueues it.
            enqueue_step(orch, run, following, attempt=0)
    return _run_state(orch, run_id)


def resume_pipeline(orch: Orchestrator, run_id: str, step_params: dict[str, Any] | None = None) -> str:
    """Re-run a run from its current step (earlier steps' results are reused). Returns the step's job id.

    A failed or cancelled run goes back to `running` with a new try of its failed step. A stalled
    running run (its step job missing or finished without the run moving on) is moved on the way the
    sweep would; a running run whose step job is queued or running is refused. `step_params` (e.g. a
    corrected parameter) are merged into the step's overrides first.
    """
    with session_scope(orch.sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise _not_found(run_id)
        current = step_jobs(session, run_id).get(run.current_step)
    if run.state == JobState.running.value:
        if current is not None and current.state in _LIVE:
            raise ValidationError(
                f"pipeline run {run_id} is running: its {run.current_step} job {current.id} is {current.state}; "
                f"wait, or end it with `continuum pipeline cancel {run_id}`"
            )
        if current is None:  # the step was never sent (a crash between two writes)
            _merge_step_params(orch, run, step_params)
            return enqueue_step(orch, run, run.current_step, attempt=0)
        advance_pipeline(orch, run_id)  # finished step job: move on, or end the run and resume below
        with session_scope(orch.sessions) as session:
            run = session.get(PipelineRun, run_id)
            current = step_jobs(session, run_id).get(run.current_step)
        if run.state == JobState.running.value:
            if current is None:
                return enqueue_step(orch, run, run.current_step, attempt=0)
            return current.id
    with session_scope(orch.sessions) as session:
        tries = sum(1 for job in session.scalars(select(Job).where(Job.pipeline_run_id == run_id))
                    if job.kind == run.current_step)
        params = _merged(run, step_params)
        moved = session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.state.in_([JobState.failed.value, JobState.cancelled.value]))
            .values(state=JobState.running.value, error=None, finished_at=None, params=params)
            .execution_options(synchronize_session=False)
        ).rowcount
    if not moved:
        raise ValidationError(
            f"pipeline run {run_id} is {run.state}; only failed, cancelled or stalled running runs can be resumed"
        )
    run.params = params
    return enqueue_step(orch, run, run.current_step, attempt=tries)


def _merged(run: PipelineRun, step_params: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(run.params or {})
    if step_params:
        steps = dict(params.get("steps", {}))
        steps[run.current_step] = {**steps.get(run.current_step, {}), **step_params}
        params["steps"] = steps
    return params


def _merge_step_params(orch: Orchestrator, run: PipelineRun, step_params: dict[str, Any] | None) -> None:
    if not step_params:
        return
    params = _merged(run, step_params)
    with session_scope(orch.sessions) as session:
        session.execute(update(PipelineRun).where(PipelineRun.id == run.id).values(params=params)
                        .execution_options(synchronize_session=False))
    run.params = params


def cancel_pipeline(orch: Orchestrator, run_id: str, reason: str = "cancelled on request") -> dict[str, Any]:
    """End a running run as `cancelled` and ask its live step job to stop.

    The run is ended first: a step that finishes meanwhile can no longer move it on (every move is a
    compare-and-set on `state = running`). Returns {"state": …, "job_id": …, "job_state": …}.
    """
    with session_scope(orch.sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise _not_found(run_id)
        ended = session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.state == JobState.running.value)
            .values(state=JobState.cancelled.value, error=f"{run.current_step}: {reason}", finished_at=utc_now())
            .execution_options(synchronize_session=False)
        ).rowcount
        live = [job for job in step_jobs(session, run_id).values() if job.state in _LIVE]
    if not ended:
        raise ValidationError(f"pipeline run {run_id} is {run.state}; only a running run can be cancelled")
    job_state = None
    for job in live:
        job_state = orch.ledger.request_cancel(job.id).value
    return {"state": JobState.cancelled.value, "job_id": live[0].id if live else None, "job_state": job_state}


def pipeline_status(orch: Orchestrator, run_id: str) -> dict[str, Any]:
    """The run and its step jobs, as plain data (CLI `pipeline show`, `--wait` progress)."""
    with session_scope(orch.sessions) as session:
        run = session.get(PipelineRun, run_id)
        if run is None:
            raise _not_found(run_id)
        jobs = step_jobs(session, run_id)
        return {
            "id": run.id, "state": run.state, "current_step": run.current_step, "schedule": run.schedule,
            "tick": run.tick, "error": run.error, "created_at": run.created_at, "finished_at": run.finished_at,
            "steps": {
                step: {"job_id": job.id, "state": job.state, "attempts": job.attempts, "progress": job.progress,
                       "result": job.result, "error": job.error}
                for step, job in ((s, jobs.get(s)) for s in ALL_STEPS) if job is not None
            },
            "plan": list(steps_of(run)),
        }
