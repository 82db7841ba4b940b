"""Run a light job (export, promote, diagnostics) inside the worker process.

A background thread renews the lease while the logic runs; a cancel request or a worker shutdown turns
`should_stop()` true, and the logic is trusted to stop at its next safe point (these jobs are short and
io-bound; killing them mid-transaction would gain nothing, the database rolls back either way).
"""

from __future__ import annotations

import threading
from typing import Any

from common.errors import PermanentError
from workers.context import JobContext, JobInterrupted
from workers.runner import protocol
from workers.runner.outcome import Outcome, OutcomeKind, Supervision


def run_inline(context: JobContext, run, supervision: Supervision) -> Outcome:
    done = threading.Event()
    state: dict[str, Any] = {"stop": None, "lost": False, "progress": None}

    def report(progress: dict[str, Any]) -> None:
        state["progress"] = progress
        supervision.publish_progress(progress)

    def stop_reason() -> str | None:
        if state["stop"] is None and supervision.shutting_down():
            state["stop"] = protocol.STOP_REQUEUE
        return state["stop"]

    def keep_lease() -> None:
        while not done.wait(supervision.heartbeat_seconds):
            beat = supervision.heartbeat(state["progress"])
            if not beat.lease_held:
                state["lost"] = True
                state["stop"] = protocol.STOP_CANCEL
            elif beat.cancel_requested:
                state["stop"] = protocol.STOP_CANCEL

    context.report_progress = report
    context.should_stop = lambda: stop_reason() is not None
    context.stop_reason = stop_reason
    beater = threading.Thread(target=keep_lease, daemon=True, name=f"lease-{context.job_id[:8]}")
    beater.start()
    try:
        result = run(context)
    except JobInterrupted:
        return _stopped(state)
    except Exception as exc:  # noqa: BLE001 - classified below
        if state["stop"] is not None:  # raised because it was asked to stop: an interruption
            return _stopped(state)
        if isinstance(exc, PermanentError):
            return Outcome(OutcomeKind.failed, error=f"{exc.__class__.__name__}: {exc}", retryable=False)
        return Outcome(OutcomeKind.failed, error=f"{exc.__class__.__name__}: {exc}", retryable=True)
    finally:
        done.set()
        beater.join()
    if state["lost"]:
        return Outcome(OutcomeKind.lease_lost, error="lease lost to another worker")
    return Outcome(OutcomeKind.succeeded, result=result if isinstance(result, dict) else {"value": result})


def _stopped(state: dict[str, Any]) -> Outcome:
    if state["lost"]:
        return Outcome(OutcomeKind.lease_lost, error="lease lost to another worker")
    if state["stop"] == protocol.STOP_CANCEL:
        return Outcome(OutcomeKind.cancelled, error="cancelled on request")
    return Outcome(OutcomeKind.requeue, error="worker shutting down")
