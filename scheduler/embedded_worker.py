"""Embedded mode: when a command needs a worker and none is live, start one for the command's duration.

The worker is a real `continuum worker` process on the embedded broker: the same code path as a
distributed deployment, nothing simulated. There is no beat in embedded mode, so an embedded worker
also runs the sweep (reaper + pipeline reconciliation) in a background thread: `start_sweeper`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
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
log = logging.getLogger("continuum.sweeper")


@contextmanager
def worker_running(settings: Settings, queues: tuple[str, ...] = ("io", "cpu"), timeout: float = 120) -> Iterator[bool]:
    """Yield True if this call started a worker (embedded mode, none live), False if one was live.

    In distributed mode workers are the operator's business: nothing is started.
    """
    from common.orchestration.enqueue import live_queues
    from workers.dispatch import check_broker
    from workers.resources import resources_for

    from common.objectstore import check_store

    check_broker(settings)  # one line in seconds, not a worker that never comes up
    check_store(settings)
    sessions = resources_for(settings).sessions
    served = live_queues(settings, sessions)
    if settings.mode is not Mode.embedded or all(q in served or (q == "cpu" and served & {"cuda", "mps"}) for q in queues):
        yield False
        return
    name = f"embedded-{os.getpid()}@local"
    proc = _spawn_worker(settings, name, detach=False)
    try:
        _wait_registered(proc, name, sessions, timeout, settings.home / "logs" / "worker.log")
        yield True
    finally:
        if proc.poll() is None:
            proc.terminate()  # warm shutdown: a running job checkpoints and goes back to the queue
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _spawn_worker(settings: Settings, name: str, detach: bool) -> subprocess.Popen:
    """A `continuum worker` process on this home's embedded broker, logging to <home>/logs/worker.log.

    `detach`: in its own session, so it outlives the command that started it (`continuum up`).
    """
    from common.home import open_private_append

    with open_private_append(settings.home / "logs" / "worker.log") as log_file:
        # settings.home is absolute (resolved once when settings were built): the worker, started in the
        # repository folder, must watch the same home as this command wherever it was run from.
        return subprocess.Popen(
            [sys.executable, "-c", "from scheduler.cli import main; main()", "worker", "-n", name, "-l", "INFO"],
            cwd=_REPO, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, CONTINUUM_HOME=str(settings.home.resolve())), start_new_session=detach,
        )


def _wait_registered(proc: subprocess.Popen, name: str, sessions, timeout: float, log_path: Path) -> None:
    """Until the worker has registered itself in the database (it then consumes its queues)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ContinuumError(f"the embedded worker exited with code {proc.returncode}: see {log_path}")
        with session_scope(sessions) as session:
            if session.scalar(select(Worker.pid).where(Worker.name == name)) == proc.pid:
                return
        if time.monotonic() > deadline:
            raise ContinuumError(f"the embedded worker did not start within {timeout:.0f}s: see {log_path}")
        time.sleep(0.3)


def _pid_file(settings: Settings) -> Path:
    return settings.home / "worker.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def worker_up(settings: Settings, timeout: float = 120) -> dict:
    """Start a long-lived embedded worker (`continuum up`) that every later command reuses, so a
    command no longer pays a worker start. Returns {pid, started}; a worker already up is reused."""
    from common.objectstore import check_store
    from workers.dispatch import check_broker
    from workers.resources import resources_for

    if settings.mode is not Mode.embedded:
        raise ContinuumError("`continuum up` starts the embedded worker; in distributed mode run "
                             "`continuum worker` on each worker machine")
    pid_file = _pid_file(settings)
    if pid_file.exists():
        pid = int(pid_file.read_text().strip() or 0)
        if pid and _alive(pid):
            return {"pid": pid, "started": False}
        pid_file.unlink()  # a worker that died without `continuum down`
    check_broker(settings)
    check_store(settings)
    name = f"up-{os.getpid()}@local"
    proc = _spawn_worker(settings, name, detach=True)
    try:
        _wait_registered(proc, name, resources_for(settings).sessions, timeout, settings.home / "logs" / "worker.log")
    except BaseException:
        proc.terminate()
        raise
    pid_file.write_text(str(proc.pid))
    return {"pid": proc.pid, "started": True}


def worker_down(settings: Settings, timeout: float = 60) -> dict:
    """Stop the worker `continuum up` started (warm shutdown: a running job checkpoints and goes back
    to the queue). Returns {pid, stopped}."""
    import signal

    pid_file = _pid_file(settings)
    if not pid_file.exists():
        return {"pid": None, "stopped": False}
    pid = int(pid_file.read_text().strip() or 0)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return {"pid": pid, "stopped": True}


def start_sweeper(settings: Settings, stop: threading.Event, interval: float | None = None) -> threading.Thread:
    """Run the sweep (reaper + reconciliation) every `interval` seconds (default
    `reaper_interval_seconds`) until `stop` is set; errors are logged and retried next time."""
    from common.orchestration.reaper import sweep
    from workers.dispatch import orchestrator_for

    period = settings.reaper_interval_seconds if interval is None else interval

    def loop() -> None:
        orch = orchestrator_for(settings)
        while not stop.wait(period):
            try:
                found = sweep(orch)
                if any(found[k] for k in ("requeued", "dead", "resent")) or any(found["pipelines"].values()):
                    log.info("sweep: %s", found)
            except Exception as exc:  # noqa: BLE001 - a busy database must not end the sweeper
                log.warning("sweep failed (will retry): %s", exc)

    thread = threading.Thread(target=loop, name="continuum-sweeper", daemon=True)
    thread.start()
    return thread
