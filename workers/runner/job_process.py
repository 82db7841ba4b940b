"""Starting a job process: forked from a warm fork server, or spawned as a fresh interpreter.

Why a fork server: a job process imports torch, transformers and peft before it can run a line of job
logic, 4–5 s of every ML job on a laptop. The standard library's `multiprocessing` fork server is a
process that imports those modules once (`set_forkserver_preload`) and forks a child per job, so the
child starts with them loaded. It holds no database connection, CUDA context or thread when it forks:
it only imported code. The worker starts it when it comes up (`warm_up`), so the first job does not
wait for the imports either.

`spawn` (a new interpreter per job, `subprocess.Popen`) stays available: it is what macOS needs
(forking after Apple's frameworks are loaded is unsafe) and what `CONTINUUM_JOB_PROCESS_START=spawn`
chooses anywhere.

Either way the supervisor gets the same handle (pid, poll, send_signal, kill, wait, returncode) and
reads the same JSON-line pipe (protocol.py). A forked child's parent is the fork server, not the
worker: it asks the kernel for SIGKILL when the fork server dies (which it does when the worker dies)
and watches the worker's pid itself (child.py).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from typing import Protocol

log = logging.getLogger("continuum.runner")

FORKSERVER = "forkserver"
SPAWN = "spawn"


class JobProcess(Protocol):
    """The part of `subprocess.Popen` the supervisor uses."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self) -> int | None: ...


def resolve_start_method(setting: str) -> str:
    """`auto` → forkserver on Linux (fork is safe there and the fork server is in the standard library),
    spawn elsewhere."""
    if setting in (FORKSERVER, SPAWN):
        return setting
    return FORKSERVER if sys.platform.startswith("linux") else SPAWN


# Imported lazily inside the jobs' `run` (so a worker parent never imports torch); the server imports
# them once. Llama is the architecture of the built-in tiny model and of SmolLM2; another architecture's
# modelling module is imported by the job itself, once per job process.
_JOB_LIBRARIES = (
    "workers.export.shard",
    "workers.evaluate.anchors",
    "workers.model_setup",
    "peft",
    "transformers.models.auto.modeling_auto",
    "transformers.models.llama.modeling_llama",
)


def preload_modules() -> list[str]:
    """What the fork server imports once: the logic of every job kind that runs in its own process, the
    learning code and libraries that logic imports when it runs (torch, transformers, peft), and the
    child's entry point. `__main__` first, as multiprocessing does by default: a forked child re-runs the
    parent's main script, which is cheap once everything it imports is loaded."""
    import pkgutil

    import workers.learning
    from workers.kinds import KINDS

    entries = sorted({kind.entry.partition(":")[0] for kind in KINDS.values() if kind.isolation == "process"})
    learning = sorted(m.name for m in pkgutil.iter_modules(workers.learning.__path__, "workers.learning."))
    return ["__main__", "workers.runner.child", *entries, *learning, *_JOB_LIBRARIES]


_lock = threading.Lock()
_configured = False


def _forkserver_context() -> multiprocessing.context.BaseContext:
    global _configured
    context = multiprocessing.get_context(FORKSERVER)
    with _lock:
        if not _configured:
            # The server must never start CUDA (a forked child cannot use a CUDA its parent set up):
            # nothing it imports asks for a device (a test checks), and should anything call
            # torch.cuda.is_available(), this makes torch answer through NVML without starting CUDA.
            os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
            context.set_forkserver_preload(preload_modules())
            _configured = True
    return context


def warm_up(in_background: bool = True) -> None:
    """Start the fork server now (it imports the job code while the worker waits for its first job)."""
    from multiprocessing import forkserver

    def start() -> None:
        try:
            _forkserver_context()
            forkserver.ensure_running()
        except Exception as exc:  # noqa: BLE001 - a job will try again (and fail with the reason) later
            log.warning("job fork server did not start: %s", exc)

    if in_background:
        threading.Thread(target=start, daemon=True, name="forkserver-warm-up").start()
    else:
        start()


def start_job_process(job_id: str, lease: list[str], method: str) -> tuple[JobProcess, int]:
    """Start the process for `job_id`; returns it and the read end of its progress pipe (non-blocking).
    `lease` = [owner, token] for the child's fenced final write, or []."""
    if method == FORKSERVER:
        return _fork(job_id, lease)
    return _spawn(job_id, lease)


def _spawn(job_id: str, lease: list[str]) -> tuple[JobProcess, int]:
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, CONTINUUM_SUPERVISOR_PID=str(os.getpid()))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.runner.child", job_id, str(write_fd), *lease],
            pass_fds=(write_fd,),
            env=env,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            close_fds=True,
        )
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return proc, read_fd


def _fork(job_id: str, lease: list[str]) -> tuple[JobProcess, int]:
    from workers.runner.child import run_forked

    context = _forkserver_context()
    reader, writer = context.Pipe(duplex=False)
    # The environment goes with the job: the fork server's copy is the one the worker had when the
    # server started, and the settings a job reads must be this process's now.
    process = context.Process(target=run_forked, name=f"job-{job_id}", daemon=False,
                              args=([job_id, "-", *lease], writer, os.getpid(), dict(os.environ)))
    try:
        process.start()
    finally:
        writer.close()
    read_fd = os.dup(reader.fileno())  # the supervisor reads raw bytes; the Connection is not needed
    reader.close()
    os.set_blocking(read_fd, False)
    return _ForkedProcess(process), read_fd


class _ForkedProcess:
    """A `multiprocessing.Process` seen through the Popen-like `JobProcess` interface."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self._process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode  # non-blocking: reads the exit status once the server reports it

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> int | None:
        self._process.join()
        return self._process.exitcode


def die_with_parent() -> None:  # pragma: no cover - runs in the new process
    """Linux: have the kernel SIGKILL this process when its parent dies (kill -9, OOM)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the child's parent-pid watchdog covers it
