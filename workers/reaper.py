"""The reaper over Celery (`continuum.reap`, beat): the logic is `common.orchestration.reaper`."""

from __future__ import annotations

from typing import Any

from celery import Celery

from common.orchestration import reaper
from common.settings import Settings
from workers.dispatch import orchestrator_for


def reap_and_resend(settings: Settings, app: Celery) -> dict[str, Any]:
    """Requeue expired leases, re-send (boundedly) lost queued jobs; {"requeued", "dead", "resent"}."""
    return reaper.reap_and_resend(orchestrator_for(settings, app))


def sweep(settings: Settings, app: Celery) -> dict[str, Any]:
    """Reaper pass plus pipeline reconciliation (what beat and the embedded worker run periodically)."""
    return reaper.sweep(orchestrator_for(settings, app))
