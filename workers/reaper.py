"""The lease reaper: jobs whose worker vanished go back to the queue (or fail when out of attempts),
and queued jobs whose message may have been lost get it again. Run by beat and `continuum.reap`."""

from __future__ import annotations

from typing import Any

from celery import Celery

from common.settings import Settings
from workers.dispatch import send_job
from workers.resources import resources_for


def reap_and_resend(settings: Settings, app: Celery) -> dict[str, Any]:
    ledger = resources_for(settings).ledger
    result = ledger.reap(resend_after_seconds=settings.queued_resend_seconds)
    for job_id in [*result.requeued, *result.resend]:
        send_job(app, ledger.get(job_id))
    dead_pipelines = {ledger.get(job_id).pipeline_run_id for job_id in result.dead} - {None}
    if dead_pipelines:
        from scheduler.pipeline import advance_pipeline

        for run_id in dead_pipelines:
            advance_pipeline(settings, app, run_id)
    return {"requeued": result.requeued, "dead": result.dead, "resent": result.resend}
