"""Real worker processes for the reliability tests: start, wait until registered, signal, inspect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# Fast clocks so crashes are noticed in seconds, not minutes. Everything else is production default.
FAST_ENV = {
    "CONTINUUM_JOB_LEASE_SECONDS": "4",
    "CONTINUUM_JOB_HEARTBEAT_SECONDS": "0.5",
    "CONTINUUM_WORKER_HEARTBEAT_SECONDS": "1",
    "CONTINUUM_CHILD_STOP_GRACE_SECONDS": "8",
}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class WorkerProcess:
    name: str
    log_path: Path
    queues: str = "cpu,io"
    app_module: str | None = None  # None: `continuum worker`; else `celery -A <module> worker`
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "WorkerProcess":
        if self.app_module is None:
            argv = [sys.executable, "-c", "from scheduler.cli import main; main()", "worker",
                    "-Q", self.queues, "--device", "cpu", "-n", self.name, "-l", "INFO"]
        else:
            argv = [sys.executable, "-m", "celery", "-A", self.app_module, "worker", "-Q", self.queues,
                    "-P", "solo", "-c", "1", "-n", self.name, "-l", "INFO", "-E", "--without-mingle", "--without-gossip"]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ), stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def wait_registered(self, ledger_sessions, timeout: float = 60) -> None:
        from sqlalchemy import select

        from common.db.models import Worker

        def registered() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            with ledger_sessions() as session:
                return session.scalar(select(Worker.pid).where(Worker.name == self.name)) == self.proc.pid

        wait_for(registered, timeout, f"worker {self.name} to register")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rss_bytes(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss
