"""Run one job through the queue and follow it: what `continuum train/evaluate/…` and the demo share.

In embedded mode a worker is started for the duration when none is live, so a single command works on
a laptop; in distributed mode the job goes to whichever worker serves its queue.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.errors import ContinuumError
from common.settings import Settings

FINISHED = {"succeeded", "failed", "cancelled", "skipped"}


class JobFailed(ContinuumError):
    """The job ended failed or cancelled; the message carries its recorded error."""


def follow_job(settings: Settings, job_id: str, console: Console, timeout: float = 3600, label: str = "") -> dict[str, Any]:
    """Poll the ledger with a progress bar until the job finishes; returns its result (raises JobFailed)."""
    from workers.resources import resources_for

    ledger = resources_for(settings).ledger
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bars:
        task = bars.add_task(label or "job", total=None, info="queued")
        while True:
            job = ledger.get(job_id)
            progress = job.progress or {}
            info = job.state + (f" loss={progress['loss']:.3f}" if isinstance(progress.get("loss"), float) else "")
            bars.update(task, total=progress.get("total"), completed=progress.get("step") or 0, info=info)
            if job.state in FINISHED:
                break
            if time.monotonic() > deadline:
                raise JobFailed(f"job {job_id} still {job.state} after {timeout:.0f}s: follow it with `continuum jobs show {job_id}`")
            time.sleep(0.3)
    if job.state in ("failed", "cancelled"):
        raise JobFailed(f"{job.kind} job {job_id} {job.state}: {job.error or 'no error recorded'}")
    return {"job_id": job_id, "state": job.state, **(job.result or {})}


def run_job(settings: Settings, kind: str, params: dict[str, Any], console: Console, device: str = "auto",
            timeout: float = 3600, wait: bool = True) -> dict[str, Any]:
    """Enqueue `kind` with `params`; with `wait`, make sure a worker runs it and return its result."""
    from scheduler.embedded_worker import worker_running
    from scheduler.producer import enqueue_job, preflight_job

    preflight_job(settings, kind, params, device)  # bad input fails here, before a worker starts
    if not wait:
        return {"job_id": enqueue_job(settings, kind, params, device=device), "state": "queued"}
    queues = ("io",) if kind in ("export", "promote") else ("io", "cpu")
    with worker_running(settings, queues=queues):
        job_id = enqueue_job(settings, kind, params, device=device)
        return follow_job(settings, job_id, console, timeout, label=kind)


def follow_pipeline(settings: Settings, run_id: str, console: Console, timeout: float = 3600) -> dict[str, Any]:
    """Live progress bars per pipeline step until the run finishes; returns its final status."""
    from scheduler.pipeline import pipeline_status

    deadline = time.monotonic() + timeout
    with Progress(TextColumn("{task.description:<9}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        status = pipeline_status(settings, run_id)
        plan = status["plan"]
        tasks = {step: bars.add_task(step, total=1, info="waiting", start=False) for step in plan}
        while True:
            status = pipeline_status(settings, run_id)
            for step, info in status["steps"].items():
                progress = info.get("progress") or {}
                total = progress.get("total") or 1
                done = total if info["state"] in ("succeeded", "skipped") else min(progress.get("step") or 0, total)
                label = info["state"] + (f" loss={progress['loss']:.3f}" if isinstance(progress.get("loss"), float) else "")
                bars.start_task(tasks[step])
                bars.update(tasks[step], total=total, completed=done, info=label)
            if status["state"] != "running":
                for step in plan:  # steps the run ended before: say so rather than "waiting"
                    if step not in status["steps"]:
                        bars.update(tasks[step], info="not run")
                return status
            if time.monotonic() > deadline:
                console.print(f"[yellow]still running after {timeout:.0f}s; follow it with "
                              f"`continuum pipeline show {run_id}`[/yellow]")
                return status
            time.sleep(0.5)
