"""Run a job in its own process and supervise it.

Why a process per job: it can be killed without killing the worker, it returns all GPU memory when it
exits, and it is safe beside the `solo` pool that MPS needs. The supervisor loop (in the worker)
renews the lease, forwards progress, and stops the child:
- cancel requested → SIGUSR1, SIGKILL after a short grace;
- soft time limit or worker shutdown → SIGTERM (the child checkpoints and exits "interrupted"),
  SIGKILL after `stop_grace_seconds`;
- hard time limit → SIGKILL;
- lease lost (another worker owns the job now) → SIGKILL at once: never two executions at once.
A heartbeat that fails (database blip) is tried again at the next beat; only when the lease would
actually have expired by now (the last renewal + the lease length) is the job given up as lost.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from typing import Any

from workers.runner import protocol
from workers.runner.job_process import JobProcess, resolve_start_method, start_job_process
from workers.runner.outcome import Outcome, OutcomeKind, Supervision

log = logging.getLogger("continuum.runner")

_POLL_SECONDS = 0.2
_PROGRESS_PUBLISH_SECONDS = 1.0


def run_in_subprocess(job_id: str, supervision: Supervision, start_method: str = "auto") -> Outcome:
    """Run `job_id` in its own process (forked from the warm fork server or spawned, see job_process.py)
    and supervise it until it ends."""
    lease = [supervision.lease_owner, str(supervision.lease_token)] if supervision.lease_token is not None else []
    method = resolve_start_method(start_method)
    started_at = time.monotonic()
    proc, read_fd = start_job_process(job_id, lease, method)
    try:
        outcome = _Supervisor(proc, read_fd, supervision, started_at).loop()
        outcome.start_method = method
        return outcome
    finally:
        if proc.poll() is None:  # any unexpected exit from the loop must not leave the job running
            proc.kill()
            proc.wait()
        os.close(read_fd)


class _Supervisor:
    def __init__(self, proc: JobProcess, read_fd: int, supervision: Supervision, started_at: float):
        self.proc = proc
        self.fd = read_fd
        self.sup = supervision
        self.reader = protocol.LineReader()
        self.final: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None
        self.progress_dirty = False
        self.stop_reason: str | None = None
        self.stop_note = ""
        self.kill_at: float | None = None
        self.killed_hard = False
        self.last_progress: dict[str, Any] | None = None
        self.started_at = started_at
        self.startup_seconds: float | None = None  # start → the job's code loaded, about to run
        self.code_preloaded: bool | None = None

    # ------------------------------------------------------------------ loop

    def loop(self) -> Outcome:
        started = self.started_at
        # When the lease would expire if no renewal gets through (the claim happened just before).
        lease_deadline = started + self.sup.lease_seconds
        next_heartbeat = started + self.sup.heartbeat_seconds
        next_publish = started
        selector = selectors.DefaultSelector()
        selector.register(self.fd, selectors.EVENT_READ)
        try:
            while True:
                if selector.select(_POLL_SECONDS):
                    self._drain()
                if self.proc.poll() is not None:
                    self._drain()
                    break
                now = time.monotonic()
                if self.progress_dirty and now >= next_publish:
                    self.sup.publish_progress(self.progress or {})
                    next_publish = now + _PROGRESS_PUBLISH_SECONDS
                if now >= next_heartbeat:
                    next_heartbeat = now + self.sup.heartbeat_seconds
                    try:
                        beat = self.sup.heartbeat(self.progress if self.progress_dirty else None)
                    except Exception as exc:  # noqa: BLE001 - a database blip: the lease still runs
                        beat = None
                        # Give up only when the lease would have expired before the next try.
                        if now + self.sup.heartbeat_seconds >= lease_deadline:
                            self._kill()
                            return self._lost(f"lease not renewed for {self.sup.lease_seconds:g}s ({exc})")
                        log.warning("heartbeat failed (%s); retrying until the lease would expire", exc)
                    if beat is not None:
                        lease_deadline = now + self.sup.lease_seconds  # renewed at `now` or later
                        self.progress_dirty = False
                        if not beat.lease_held:
                            self._kill()
                            return self._lost("lease lost to another worker")
                        if beat.cancel_requested:
                            self._ask_stop(protocol.STOP_CANCEL, "cancel requested",
                                           min(self.sup.stop_grace_seconds, 3.0))
                if self.sup.shutting_down():
                    self._ask_stop(protocol.STOP_REQUEUE, "worker shutting down", self.sup.stop_grace_seconds)
                elapsed = now - started
                if elapsed >= self.sup.soft_time_limit:
                    self._ask_stop(protocol.STOP_REQUEUE, "soft time limit", self.sup.stop_grace_seconds)
                if elapsed >= self.sup.hard_time_limit and not self.killed_hard:
                    self.killed_hard = True
                    self._kill()
                if self.kill_at is not None and now >= self.kill_at:
                    self._kill()
        finally:
            selector.close()
        if self.progress_dirty:  # the last progress reaches Flower and the ledger, not only the next beat
            self.sup.publish_progress(self.progress or {})
            try:
                self.sup.heartbeat(self.progress)
            except Exception as exc:  # noqa: BLE001 - the outcome is recorded next; progress is best effort
                log.warning("final progress not recorded: %s", exc)
        outcome = self._outcome()
        outcome.progress = self.last_progress
        outcome.startup_seconds = self.startup_seconds
        outcome.code_preloaded = self.code_preloaded
        return outcome

    def _lost(self, error: str) -> Outcome:
        return Outcome(OutcomeKind.lease_lost, error=error, progress=self.last_progress)

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            for message in self.reader.feed(chunk):
                if message["type"] == "started":
                    self.startup_seconds = time.monotonic() - self.started_at
                    self.code_preloaded = bool(message.get("preloaded"))
                elif message["type"] == "progress":
                    self.progress = self.last_progress = message.get("data") or {}
                    self.progress_dirty = True
                else:
                    self.final = message

    def _ask_stop(self, reason: str, note: str, grace: float) -> None:
        if self.stop_reason == protocol.STOP_CANCEL or (self.stop_reason is not None and reason != protocol.STOP_CANCEL):
            return  # already stopping (a cancel may still upgrade a requeue)
        self.stop_reason, self.stop_note = reason, note
        sig = protocol.CANCEL_SIGNAL if reason == protocol.STOP_CANCEL else signal.SIGTERM
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # ------------------------------------------------------------------ mapping the exit

    def _outcome(self) -> Outcome:
        code = self.proc.returncode
        final = self.final or {}
        if code == protocol.EXIT_OK and final.get("type") == "result":
            return Outcome(OutcomeKind.succeeded, result=final.get("data") or {})
        if final.get("type") == "lease_lost":  # our fenced final write was refused: record nothing
            return Outcome(OutcomeKind.lease_lost, error=final.get("message", "lease lost"))
        if self.stop_reason == protocol.STOP_CANCEL or (
            final.get("type") == "interrupted" and final.get("reason") == protocol.STOP_CANCEL
        ):
            return Outcome(OutcomeKind.cancelled, error="cancelled on request")
        if code == protocol.EXIT_INTERRUPTED:
            return Outcome(OutcomeKind.requeue, error=self.stop_note or "interrupted")
        if self.killed_hard:
            return Outcome(OutcomeKind.failed, error="killed at the hard time limit", retryable=True)
        if final.get("type") == "error":
            return Outcome(OutcomeKind.failed, error=final.get("message", ""), retryable=bool(final.get("retryable")))
        if self.stop_reason == protocol.STOP_REQUEUE:
            # Asked to checkpoint but did not exit cleanly in time: count it as a failed try.
            return Outcome(OutcomeKind.failed, error=f"did not stop within the grace period ({self.stop_note})")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return Outcome(OutcomeKind.failed, error=f"job process killed by {name}", retryable=True)
        return Outcome(OutcomeKind.failed, error=f"job process exited with code {code} without a result", retryable=True)
