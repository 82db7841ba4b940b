"""Entry point of a job process: `python -m workers.runner.child <job_id> <progress_fd>`.

Runs one job's logic with a JobContext and reports through the pipe (see protocol.py). It never
changes the job's ledger state: the supervisor owns the lease. If the supervisor dies (worker killed),
this process exits at once (Linux: parent-death signal; elsewhere: a watchdog on the parent pid), so a
job never keeps running where nobody holds its lease.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from workers.runner import protocol


class _StopFlag:
    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        # A cancel outranks a requeue: a cancelled job must not come back.
        if self.reason != protocol.STOP_CANCEL:
            self.reason = reason


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(protocol.EXIT_RETRYABLE)  # orphaned: the lease is gone, stop now, no cleanup
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    job_id, fd = argv[0], int(argv[1])
    pipe = os.fdopen(fd, "wb", buffering=0)
    stop = _StopFlag()
    for sig in protocol.REQUEUE_SIGNALS:
        signal.signal(sig, lambda *_: stop.set(protocol.STOP_REQUEUE))
    signal.signal(protocol.CANCEL_SIGNAL, lambda *_: stop.set(protocol.STOP_CANCEL))
    parent = int(os.environ.get("CONTINUUM_SUPERVISOR_PID", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()

    def send(message: dict[str, Any]) -> None:
        try:
            pipe.write(protocol.encode(message))
        except BrokenPipeError:
            os._exit(protocol.EXIT_RETRYABLE)

    from common.errors import PermanentError
    from common.settings import load_settings
    from workers.context import JobContext, JobInterrupted
    from workers.kinds import job_kind, load_entry
    from workers.resources import resources_for

    try:
        settings = load_settings()
        resources = resources_for(settings)
        job = resources.ledger.get(job_id)
        run = load_entry(job_kind(job.kind))
        context = JobContext(
            settings=settings,
            sessions=resources.sessions,
            store=resources.store,
            job_id=job_id,
            params=dict(job.params or {}),
            report_progress=lambda data: send({"type": "progress", "data": data}),
            should_stop=lambda: stop.reason is not None,
            stop_reason=lambda: stop.reason,
        )
        result = run(context)
    except JobInterrupted:
        send({"type": "interrupted", "reason": stop.reason or protocol.STOP_REQUEUE})
        return protocol.EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - classified below
        if stop.reason is not None:
            # Logic that stops on request may raise its own exception (e.g. TrainingStopped after its
            # checkpoint): anything raised once a stop was asked for is the interruption, not a failure.
            send({"type": "interrupted", "reason": stop.reason, "message": _one_line(exc)})
            return protocol.EXIT_INTERRUPTED
        return _report_error(send, exc, PermanentError)
    send({"type": "result", "data": result if isinstance(result, dict) else {"value": result}})
    return protocol.EXIT_OK


def _report_error(send, exc: Exception, permanent: type[Exception]) -> int:
    if isinstance(exc, permanent):
        send({"type": "error", "message": _one_line(exc), "retryable": False})
        return protocol.EXIT_PERMANENT
    send({"type": "error", "message": _one_line(exc), "retryable": True})
    return protocol.EXIT_RETRYABLE


def _one_line(exc: BaseException) -> str:
    text = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
    return text[:2000]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
