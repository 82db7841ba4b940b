"""Embedded mode: when a command needs a worker and none is live, start one for the command's duration.

The worker is a real `continuum worker` process on the embedded broker: the same code path as a
distributed deployment, nothing simulated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Worker
from common.errors import ContinuumError
from common.settings import Mode, Settings

_REPO = Path(__file__).resolve().parents[1]


@contextmanager
def worker_running(settings: Settings, queues: tuple[str, ...] = ("io", "cpu"), timeout: float = 120) -> Iterator[bool]:
    """Yield True if this call started a worker (embedded mode, none live), False if one was live.

    In distributed mode workers are the operator's business: nothing is started.
    """
    from scheduler.producer import live_queues
    from workers.resources import resources_for

    sessions = resources_for(settings).sessions
    served = live_queues(settings, sessions)
    if settings.mode is not Mode.embedded or all(q in served or (q == "cpu" and served & {"cuda", "mps"}) for q in queues):
        yield False
        return
    log_path = settings.home / "logs" / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    name = f"embedded-{os.getpid()}@local"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from scheduler.cli import main; main()", "worker", "-n", name, "-l", "INFO"],
            cwd=_REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, CONTINUUM_HOME=str(settings.home)),
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ContinuumError(f"the embedded worker exited with code {proc.returncode}: see {log_path}")
            with session_scope(sessions) as session:
                if session.scalar(select(Worker.pid).where(Worker.name == name)) == proc.pid:
                    break
            if time.monotonic() > deadline:
                raise ContinuumError(f"the embedded worker did not start within {timeout:.0f}s: see {log_path}")
            time.sleep(0.3)
        yield True
    finally:
        if proc.poll() is None:
            proc.terminate()  # warm shutdown: a running job checkpoints and goes back to the queue
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
