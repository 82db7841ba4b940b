"""The reaper: jobs whose worker vanished go back to the queue (or fail when out of attempts), and
queued jobs whose message may have been lost get it again — a bounded number of times.

A job still unclaimed after `queued_max_resends` re-sends is failed with a reason that names its
queue: no worker serves it (or every message is lost), and sending it forever hides that.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, update

from common.db.engine import session_scope
from common.db.models import Job, JobState
from common.orchestration.context import Orchestrator
from common.orchestration.reconcile import reconcile_pipelines


def _count_send(orch: Orchestrator, job_id: str) -> int | None:
    """Record one more re-send of a queued job; returns its send count (None: no longer queued)."""
    with session_scope(orch.sessions) as session:
        return session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.queued.value)
            .values(send_count=Job.send_count + 1, last_sent_at=func.now())
            .returning(Job.send_count)
            .execution_options(synchronize_session=False)
        ).scalar()


def _give_up(orch: Orchestrator, job: Job, sends: int) -> bool:
    reason = (f"never claimed after {sends} sends to queue {job.queue!r}: start a worker that serves it "
              f"(`continuum worker -Q {job.queue}`), then `continuum jobs retry {job.id}`")
    with session_scope(orch.sessions) as session:
        return bool(session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.queued.value)
            .values(state=JobState.failed.value, error=reason, finished_at=func.now(), updated_at=func.now())
            .execution_options(synchronize_session=False)
        ).rowcount)


def reap_and_resend(orch: Orchestrator) -> dict[str, Any]:
    """One reaper pass. Returns {"requeued": ids, "dead": ids, "resent": ids} (dead includes jobs
    given up after too many re-sends); pipelines whose step died are moved on (ended)."""
    ledger = orch.ledger
    result = ledger.reap(resend_after_seconds=orch.settings.queued_resend_seconds)
    dead = list(result.dead)
    resent: list[str] = []
    for job_id in result.requeued:
        job = ledger.get(job_id)
        orch.sender.send(job.id, job.kind, job.queue)
    for job_id in result.resend:
        job = ledger.get(job_id)
        sends = _count_send(orch, job_id)
        if sends is None:
            continue  # claimed or cancelled meanwhile
        if sends > orch.settings.queued_max_resends:
            if _give_up(orch, job, sends - 1):
                dead.append(job_id)
            continue
        orch.sender.send(job.id, job.kind, job.queue)
        resent.append(job_id)
    dead_pipelines = {ledger.get(job_id).pipeline_run_id for job_id in dead} - {None}
    if dead_pipelines:
        from common.orchestration.pipeline import advance_pipeline

        for run_id in dead_pipelines:
            advance_pipeline(orch, run_id)
    return {"requeued": result.requeued, "dead": dead, "resent": resent}


def sweep(orch: Orchestrator) -> dict[str, Any]:
    """The periodic pass beat and the embedded worker run: reaper, pipeline reconciliation, and the
    online learner's time rule for lineages whose turns stopped coming."""
    reaped = reap_and_resend(orch)
    return {**reaped, "pipelines": reconcile_pipelines(orch).as_dict(), "online_checks": online_publish_checks(orch)}


def online_publish_checks(orch: Orchestrator, now: float | None = None) -> list[str]:
    """Enqueue one `online` job per lineage that may hold unpublished updates, at most once per
    `online_publish_seconds` (the key carries the period's number): with no turns pending, the job
    publishes a version only if its checkpoint says one is due by time. Returns the job ids."""
    import time

    from common.online.store import lineages_maybe_unpublished
    from common.orchestration.enqueue import enqueue_job

    period = orch.settings.online_publish_seconds
    if not period:
        return []
    with session_scope(orch.sessions) as session:
        lineages = lineages_maybe_unpublished(session)
    bucket = int((time.time() if now is None else now) // period)
    return [enqueue_job(orch, "online", {"lineage": lineage}, idempotency_key=f"online-publish:{lineage}:{bucket}")
            for lineage in lineages]
