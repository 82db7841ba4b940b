"""The reconciliation sweep: every pipeline run ends, even when an event that should move it was lost.

Events are lost when a process dies between two writes (after inserting a run, after a step's
compare-and-set), or when nobody is told a step ended (a queued step's job cancelled by hand). The
sweep — run by beat and by the embedded worker every `reaper_interval_seconds`, never by a user —
looks at every `running` run and its current step's newest job:

| step job                       | the sweep                                                   |
| ------------------------------ | ----------------------------------------------------------- |
| finished (any outcome)         | `advance_pipeline`: next step, or end the run as the job did |
| missing for > grace seconds    | enqueue it (same key as the lost enqueue: no duplicate)     |
| queued or running              | nothing: the reaper re-sends or requeues it                 |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import JobState, PipelineRun
from common.ledger import utc_now
from common.orchestration.context import Orchestrator
from common.orchestration.pipeline import advance_pipeline, enqueue_step, step_jobs, steps_of


@dataclass
class SweepResult:
    advanced: list[str] = field(default_factory=list)  # runs moved on or ended by a finished step
    enqueued: list[str] = field(default_factory=list)  # runs whose missing step job was (re)sent

    def as_dict(self) -> dict[str, list[str]]:
        return {"advanced": self.advanced, "enqueued": self.enqueued}


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were written as UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def reconcile_pipelines(orch: Orchestrator, grace_seconds: float | None = None,
                        now: datetime | None = None) -> SweepResult:
    """Advance or end every running run whose current step is finished, or missing past the grace."""
    grace = timedelta(seconds=orch.settings.pipeline_reconcile_grace_seconds if grace_seconds is None
                      else grace_seconds)
    now = now or utc_now()
    result = SweepResult()
    with session_scope(orch.sessions) as session:
        runs = session.scalars(select(PipelineRun).where(PipelineRun.state == JobState.running.value)).all()
        jobs = {run.id: step_jobs(session, run.id) for run in runs}
    for run in runs:
        current = jobs[run.id].get(run.current_step)
        if current is not None:
            if JobState(current.state).finished:
                advance_pipeline(orch, run.id)
                result.advanced.append(run.id)
            continue
        # No job for the current step: when did the run arrive there? (the previous step's end)
        plan = steps_of(run)
        index = plan.index(run.current_step)
        previous = jobs[run.id].get(plan[index - 1]) if index else None
        since = _aware(previous.finished_at if previous is not None and previous.finished_at else run.created_at)
        if since is None or now - since >= grace:
            enqueue_step(orch, run, run.current_step, attempt=0)
            result.enqueued.append(run.id)
    return result
