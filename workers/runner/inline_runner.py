"""Run a light job (export, promote, diagnostics) inside the worker process.

A per-process keeper thread renews the leases of the inline jobs running in it and enforces their limits:
- cancel requested or worker shutdown → `should_stop()` turns true; the logic stops at its next safe
  point. Logic that does not look is still stopped at its final write: that write is fenced
  (`JobContext.finish`) and refused once a cancel was requested, so a cancelled export ends
  `cancelled`, never `succeeded`;
- soft time limit → `should_stop()` turns true with reason "requeue" (checkpoint and hand back);
- hard time limit → the exception `HardTimeLimitExceeded` is raised in the job's thread (Celery's own
  limits do not work under the `solo` pool), and the attempt fails; whatever the thread still does
  after that cannot become visible: its lease is gone, so its fenced final write is refused.
Killing these io-bound jobs mid-transaction gains nothing: the database rolls back either way.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Any

from common.errors import PermanentError
from common.ledger import CancelledAtFinish, LeaseLost
from workers.context import JobContext, JobInterrupted
from workers.runner import protocol
from workers.runner.outcome import Outcome, OutcomeKind, Supervision

log = logging.getLogger("continuum.runner")


class HardTimeLimitExceeded(BaseException):
    """Raised asynchronously in an inline job's thread at its hard time limit (BaseException: logic's
    `except Exception` must not swallow it)."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    # Delivered at the thread's next bytecode boundary (a blocking C call returns first).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


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
                try:
                    entry[2]()
                except Exception as exc:  # noqa: BLE001 - one job's keeper error must not stop the others
                    log.warning("inline lease keeper: %s", exc)
            self._wake.wait(max(0.01, min(wait, 1.0)))


_keeper = _LeaseKeeper()


def run_inline(context: JobContext, run, supervision: Supervision) -> Outcome:
    state: dict[str, Any] = {"stop": None, "lost": False, "progress": None, "hard": False, "done": False}
    started = time.monotonic()
    lease_deadline = [started + supervision.lease_seconds]
    thread_id = threading.get_ident()
    finishing = threading.Lock()  # the hard-limit raise must never land after `run` returned

    def report(progress: dict[str, Any]) -> None:
        state["progress"] = progress
        supervision.publish_progress(progress)

    def stop_reason() -> str | None:
        if state["stop"] is None and supervision.shutting_down():
            state["stop"] = protocol.STOP_REQUEUE
        return state["stop"]

    def keep_lease() -> None:
        now = time.monotonic()
        elapsed = now - started
        if elapsed >= supervision.soft_time_limit and state["stop"] is None:
            state["stop"] = protocol.STOP_REQUEUE
        if elapsed >= supervision.hard_time_limit and not state["hard"]:
            with finishing:
                if not state["done"]:
                    state["hard"] = True
                    _raise_in_thread(thread_id, HardTimeLimitExceeded)
        try:
            beat = supervision.heartbeat(state["progress"])
        except Exception:  # noqa: BLE001 - a database blip: try again at the next beat, while the lease runs
            if now + supervision.heartbeat_seconds >= lease_deadline[0]:
                state["lost"] = True
                state["stop"] = protocol.STOP_CANCEL
            return
        lease_deadline[0] = now + supervision.lease_seconds
        if not beat.lease_held:
            state["lost"] = True
            state["stop"] = protocol.STOP_CANCEL
        elif beat.cancel_requested:
            state["stop"] = protocol.STOP_CANCEL

    context.report_progress = report
    context.should_stop = lambda: stop_reason() is not None
    context.stop_reason = stop_reason
    context.lease_owner = context.lease_owner or supervision.lease_owner or None
    if context.lease_token is None:
        context.lease_token = supervision.lease_token
    key = id(state)
    _keeper.add(key, min(supervision.heartbeat_seconds, max(0.05, supervision.hard_time_limit / 4)), keep_lease)
    try:
        try:
            result = run(context)
        finally:
            with finishing:
                state["done"] = True
    except HardTimeLimitExceeded:
        return _with(state, Outcome(OutcomeKind.failed, error="killed at the hard time limit", retryable=True))
    except LeaseLost as exc:
        return _with(state, Outcome(OutcomeKind.lease_lost, error=str(exc)))
    except CancelledAtFinish:
        return _with(state, Outcome(OutcomeKind.cancelled, error="cancelled on request"))
    except JobInterrupted:
        return _stopped(state)
    except Exception as exc:  # noqa: BLE001 - classified below
        if state["stop"] is not None:  # raised because it was asked to stop: an interruption
            return _stopped(state)
        if isinstance(exc, PermanentError):
            return _with(state, Outcome(OutcomeKind.failed, error=f"{exc.__class__.__name__}: {exc}", retryable=False))
        return _with(state, Outcome(OutcomeKind.failed, error=f"{exc.__class__.__name__}: {exc}", retryable=True))
    finally:
        _keeper.remove(key)
    if state["lost"]:
        return _with(state, Outcome(OutcomeKind.lease_lost, error="lease lost to another worker"))
    result = result if isinstance(result, dict) else {"value": result}
    return _with(state, Outcome(OutcomeKind.succeeded, result=result))


def _with(state: dict[str, Any], outcome: Outcome) -> Outcome:
    outcome.progress = state["progress"]
    return outcome


def _stopped(state: dict[str, Any]) -> Outcome:
    if state["lost"]:
        return _with(state, Outcome(OutcomeKind.lease_lost, error="lease lost to another worker"))
    if state["stop"] == protocol.STOP_CANCEL:
        return _with(state, Outcome(OutcomeKind.cancelled, error="cancelled on request"))
    return _with(state, Outcome(OutcomeKind.requeue, error="worker shutting down or soft time limit"))
