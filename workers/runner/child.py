"""Entry point of a job process: `python -m workers.runner.child <job_id> <progress_fd> [<owner> <token>]`,
or `run_forked` in a process forked from the fork server (job_process.py).

Runs one job's logic with a JobContext and reports through the pipe (see protocol.py). It never
changes the job's ledger state: the supervisor owns the lease. If the supervisor dies (worker killed),
this process exits at once (Linux: parent-death signal; elsewhere: a watchdog on the parent pid), so a
job never keeps running where nobody holds its lease — and should it still run (the worker was
SIGSTOPped, not killed), its final write carries the lease owner and fencing token it was started
with, so the database refuses it once another attempt holds the job.
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


def _watch_parent(parent_pid: int, supervisor_pid: int) -> None:
    """Exit when orphaned (our parent changed) or when the supervisor is gone. A spawned job's parent is
    the supervisor; a forked one's is the fork server, which outlives the worker only briefly."""
    while True:
        if os.getppid() != parent_pid or not _alive(supervisor_pid):
            os._exit(protocol.EXIT_RETRYABLE)  # orphaned: the lease is gone, stop now, no cleanup
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def _watch_lease(ledger, job_id: str, token: int, interval: float) -> None:  # noqa: ANN001
    """Stop at once when another attempt has claimed the job (or it ended): our supervisor may be
    stalled (SIGSTOP, a long GC pause) and unable to kill us. Our final write would be refused anyway
    (fencing); stopping saves the work and keeps us from writing checkpoints beside the new attempt."""
    while True:
        time.sleep(interval)
        try:
            job = ledger.find(job_id)
        except Exception:  # noqa: BLE001 - a database blip: look again later
            continue
        # Another claim bumped the token, or the job ended without us. (Succeeded under our own token
        # is our own final write: let the result go out. Queued with our token = reaped, not yet
        # re-claimed: go on; the final write is refused anyway unless nobody else ever takes it.)
        if job is None or job.lease_token != token or job.state in ("failed", "cancelled"):
            os._exit(protocol.EXIT_RETRYABLE)


def main(argv: list[str]) -> int:
    """Spawned: `<job_id> <progress_fd> [<owner> <token>]`, the supervisor's pid in the environment."""
    pipe = os.fdopen(int(argv[1]), "wb", buffering=0)
    supervisor = int(os.environ.get("CONTINUUM_SUPERVISOR_PID", os.getppid()))
    return run_job(argv[0], argv[2:], pipe, parent_pid=supervisor, supervisor_pid=supervisor)


def run_forked(argv: list[str], writer, supervisor_pid: int, environ: dict[str, str]) -> None:  # noqa: ANN001
    """Forked from the fork server (job_process.py): the same job run, started with the job code loaded.
    `writer` is the write end of the progress pipe (a multiprocessing Connection the server passed on)."""
    from workers.runner.job_process import die_with_parent

    die_with_parent()  # our parent is the fork server, which exits when the worker does
    parent = os.getppid()
    # The supervisor's environment as it is now (the server's copy dates from its start). Modules the
    # server preloaded read theirs at import, from the worker's environment, which does not change.
    os.environ.clear()
    os.environ.update(environ)
    pipe = os.fdopen(os.dup(writer.fileno()), "wb", buffering=0)
    writer.close()
    sys.exit(run_job(argv[0], argv[2:], pipe, parent_pid=parent, supervisor_pid=supervisor_pid))


def run_job(job_id: str, lease: list[str], pipe, parent_pid: int, supervisor_pid: int) -> int:  # noqa: ANN001
    # The lease comes from the supervisor, never from the row: read from the row, a child started
    # late could pick up the NEXT attempt's token and have its stale write accepted.
    owner, token = (lease[0], int(lease[1])) if len(lease) >= 2 else (None, None)
    stop = _StopFlag()
    for sig in protocol.REQUEUE_SIGNALS:
        signal.signal(sig, lambda *_: stop.set(protocol.STOP_REQUEUE))
    signal.signal(protocol.CANCEL_SIGNAL, lambda *_: stop.set(protocol.STOP_CANCEL))
    threading.Thread(target=_watch_parent, args=(parent_pid, supervisor_pid), daemon=True,
                     name="parent-watch").start()

    def send(message: dict[str, Any]) -> None:
        try:
            pipe.write(protocol.encode(message))
        except BrokenPipeError:
            os._exit(protocol.EXIT_RETRYABLE)

    from common.errors import PermanentError
    from common.ledger import CancelledAtFinish, LeaseLost
    from common.settings import load_settings
    from workers.context import JobContext, JobInterrupted
    from workers.kinds import job_kind, load_entry
    from workers.resources import resources_for

    try:
        settings = load_settings()
        resources = resources_for(settings)
        job = resources.ledger.get(job_id)
        if token is not None:
            threading.Thread(target=_watch_lease, args=(resources.ledger, job_id, token,
                                                        max(0.5, settings.job_heartbeat_seconds)),
                             daemon=True, name="lease-watch").start()
        preloaded = "torch" in sys.modules
        run = load_entry(job_kind(job.kind))
        send({"type": "started", "preloaded": preloaded})
        context = JobContext(
            settings=settings,
            sessions=resources.sessions,
            store=resources.store,
            job_id=job_id,
            params=dict(job.params or {}),
            report_progress=lambda data: send({"type": "progress", "data": data}),
            should_stop=lambda: stop.reason is not None,
            stop_reason=lambda: stop.reason,
            lease_owner=owner,
            lease_token=token,
            ledger=resources.ledger if token is not None else None,
        )
        result = run(context)
    except LeaseLost as exc:  # our final write was refused: another attempt owns the job; stop
        send({"type": "lease_lost", "message": _one_line(exc)})
        return protocol.EXIT_RETRYABLE
    except CancelledAtFinish as exc:
        send({"type": "interrupted", "reason": protocol.STOP_CANCEL, "message": _one_line(exc)})
        return protocol.EXIT_INTERRUPTED
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
