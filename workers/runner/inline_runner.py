"""Run a light job (export, promote, diagnostics) inside the worker process.

A per-process keeper thread renews the lease while the logic runs; a cancel request or a worker shutdown turns
`should_stop()` true, and the logic is trusted to stop at its next safe point (these jobs are short and
io-bound; killing them mid-transaction would gain nothing, the database rolls back either way).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from common.errors import PermanentError
from workers.context import JobContext, JobInterrupted
from workers.runner import protocol
from workers.runner.outcome import Outcome, OutcomeKind, Supervision


class _LeaseKeeper:
    """One thread per process renews the leases of all inline jobs running in it (a thread per job
    would cost more than the short jobs themselves; bench/dispatch.py)."""

    def __init__(self) -> None:
        self._jobs: dict[int, list[Any]] = {}  # key -> [next_due, interval, beat]
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None

    def add(self, key: int, interval: float, beat) -> None:
        with self._lock:
            self._jobs[key] = [time.monotonic() + interval, interval, beat]
            if self._pid != os.getpid():  # first use in this process (or a forked pool child)
                self._pid = os.getpid()
                threading.Thread(target=self._loop, daemon=True, name="inline-lease-keeper").start()

    def remove(self, key: int) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [(key, entry) for key, entry in self._jobs.items() if entry[0] <= now]
                for _, entry in due:
                    entry[0] = now + entry[1]
                wait = min((entry[0] for entry in self._jobs.values()), default=now + 1.0) - now
            for _, entry in due:
                entry[2]()
            self._wake.wait(max(0.01, min(wait, 1.0)))


_keeper = _LeaseKeeper()


def run_inline(context: JobContext, run, supervision: Supervision) -> Outcome:
    state: dict[str, Any] = {"stop": None, "lost": False, "progress": None}

    def report(progress: dict[str, Any]) -> None:
        state["progress"] = progress
        supervision.publish_progress(progress)

    def stop_reason() -> str | None:
        if state["stop"] is None and supervision.shutting_down():
            state["stop"] = protocol.STOP_REQUEUE
        return state["stop"]

    def keep_lease() -> None:
        try:
            beat = supervision.heartbeat(state["progress"])
        except Exception:  # noqa: BLE001 - a database blip: try again at the next beat
            return
        if not beat.lease_held:
            state["lost"] = True
            state["stop"] = protocol.STOP_CANCEL
        elif beat.cancel_requested:
            state["stop"] = protocol.STOP_CANCEL

    context.report_progress = report
    context.should_stop = lambda: stop_reason() is not None
    context.stop_reason = stop_reason
    key = id(state)
    _keeper.add(key, supervision.heartbeat_seconds, keep_lease)
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
        _keeper.remove(key)
    if state["lost"]:
        return Outcome(OutcomeKind.lease_lost, error="lease lost to another worker")
    return Outcome(OutcomeKind.succeeded, result=result if isinstance(result, dict) else {"value": result})


def _stopped(state: dict[str, Any]) -> Outcome:
    if state["lost"]:
        return Outcome(OutcomeKind.lease_lost, error="lease lost to another worker")
    if state["stop"] == protocol.STOP_CANCEL:
        return Outcome(OutcomeKind.cancelled, error="cancelled on request")
    return Outcome(OutcomeKind.requeue, error="worker shutting down")
