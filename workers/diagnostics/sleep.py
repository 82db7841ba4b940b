"""`sleep`: a stand-in for a training job that runs in its own process.

It counts `steps` steps of `step_seconds`, checkpoints its position to the object store after every
step (a job-scoped key), resumes from the checkpoint on a retry, reports progress, stops on request,
and records each execution (pid, start, end) so tests can prove no two executions overlapped.

`import_ml_code: true` first imports what an ML job imports when it runs (torch, transformers, peft and
the learning code: the fork server's preload list) and returns how long that took, `import_seconds`,
so a benchmark can time a job process's start-up up to "ready to train" (bench/job_startup.py).

Fault injection (params): `crash` = "always" kills its own process with SIGKILL at `crash_at_step`
(every attempt), "first" only on the first execution; `fail` = "permanent" | "retryable" raises.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

from common.errors import PermanentError, RetryableError
from workers.context import JobContext, JobInterrupted


def prefix(job_id: str) -> str:
    return f"jobs/{job_id}/sleep"


def _read_json(ctx: JobContext, key: str) -> dict[str, Any] | None:
    return json.loads(ctx.store.get_bytes(key)) if ctx.store.exists(key) else None


def run(ctx: JobContext) -> dict[str, Any]:
    import_seconds = _import_ml_code() if ctx.params.get("import_ml_code") else None
    steps = int(ctx.params.get("steps", 10))
    step_seconds = float(ctx.params.get("step_seconds", 0.1))
    crash = ctx.params.get("crash", "never")
    crash_at = int(ctx.params.get("crash_at_step", steps // 2))
    base = prefix(ctx.job_id)
    checkpoint_key = f"{base}/checkpoint.json"
    checkpoint = _read_json(ctx, checkpoint_key) or {"step": 0}
    resumed_from = step = int(checkpoint["step"])
    executions = list(ctx.store.list(f"{base}/executions/"))
    execution_key = f"{base}/executions/{time.time():.6f}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
    record = {"pid": os.getpid(), "start": time.time(), "resumed_from": resumed_from, "end": None}
    ctx.store.put_bytes(execution_key, json.dumps(record).encode())

    if ctx.params.get("fail") == "permanent":
        raise PermanentError("sleep job told to fail permanently")
    if ctx.params.get("fail") == "retryable":
        raise RetryableError("sleep job told to fail (retryable)")

    def stop_if_asked() -> None:
        if ctx.should_stop():
            record.update(end=time.time(), stopped=ctx.stop_reason(), step=step)
            ctx.store.put_bytes(execution_key, json.dumps(record).encode())
            raise JobInterrupted(ctx.stop_reason())

    while step < steps:
        stop_if_asked()
        if step == crash_at and (crash == "always" or (crash == "first" and not executions)):
            os.kill(os.getpid(), signal.SIGKILL)
        # A step sleeps in short slices and honours a stop inside it, as a training step loop does at
        # its next micro-batch: a long step must not outlive the supervisor's stop grace period.
        step_ends = time.monotonic() + step_seconds
        while (left := step_ends - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            stop_if_asked()
        step += 1
        # Checkpoint = position written whole (put_bytes replaces atomically), then progress.
        ctx.store.put_bytes(checkpoint_key, json.dumps({"step": step}).encode())
        ctx.report_progress({"step": step, "total": steps, "loss": round(1.0 / step, 4)})

    record.update(end=time.time(), step=step)
    ctx.store.put_bytes(execution_key, json.dumps(record).encode())
    result = {"steps": steps, "resumed_from": resumed_from, "pid": os.getpid()}
    if import_seconds is not None:
        result["import_seconds"] = round(import_seconds, 4)
    return result


def _import_ml_code() -> float:
    import importlib

    from workers.runner.job_process import preload_modules

    started = time.perf_counter()
    for module in preload_modules():
        if module != "__main__":
            importlib.import_module(module)
    return time.perf_counter() - started


def executions(store, job_id: str) -> list[dict[str, Any]]:
    """Every execution record of a sleep job, oldest first."""
    keys = sorted(store.list(f"{prefix(job_id)}/executions/"))
    return [json.loads(store.get_bytes(key)) for key in keys]
