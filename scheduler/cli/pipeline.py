"""`continuum pipeline …`: run, list, show, cancel and resume export → fisher → train → evaluate → promote."""

from __future__ import annotations

import json
from typing import Optional

import typer

from scheduler.cli.context import console, print_json, progress_console, state


def start_and_follow(run_params: dict, wait: bool, timeout: float, json_output: bool) -> None:
    """Start one pipeline run; with `wait`, follow it (an embedded worker if none runs) and say how it
    ended, exiting 1 when it failed. `pipeline run` and `documents learn` both end here."""
    from scheduler.embedded_worker import worker_running
    from scheduler.jobwait import follow_pipeline
    from scheduler.pipeline import pipeline_status, start_pipeline
    from workers.celery_app import app_for

    settings = state.settings
    state.sessions()
    pipeline_run, _ = start_pipeline(settings, app_for(settings), params=run_params)
    if not wait:
        if json_output:
            print_json(pipeline_status(settings, pipeline_run.id))
        else:
            console.print(f"pipeline run [bold]{pipeline_run.id}[/bold] queued")
        return
    with worker_running(settings):
        status = follow_pipeline(settings, pipeline_run.id, progress_console(json_output), timeout)
    if json_output:
        print_json(status)
    else:
        from scheduler.cli.humanize import pipeline_outcome

        console.print(pipeline_outcome(status), highlight=False, markup=False)
    if status["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    pipeline = typer.Typer(help="The export → fisher → train → evaluate → promote pipeline.", no_args_is_help=True)

    @pipeline.command("run")
    def run(
        wait: bool = typer.Option(False, "--wait", help="Follow the run with live progress until it ends."),
        device: str = typer.Option("auto", "--device", help="ML steps on auto (best live worker), cuda, mps or cpu."),
        params: Optional[str] = typer.Option(None, "--params", help='JSON per-step overrides, e.g. {"train": {"train": {"epochs": 2}}}.'),
        timeout: float = typer.Option(3600, "--timeout", help="With --wait: stop following after this many seconds."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Enqueue one pipeline run (in embedded mode `--wait` starts a worker if none is running)."""
        run_params = {"device": device, "steps": json.loads(params) if params else {}}
        start_and_follow(run_params, wait, timeout, json_output)

    @pipeline.command("list")
    def list_runs(
        limit: int = typer.Option(20, "--limit", help="Newest N runs."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Recent pipeline runs."""
        from rich.table import Table
        from sqlalchemy import select

        from common.db.engine import session_scope
        from common.db.models import PipelineRun

        with session_scope(state.sessions()) as session:
            runs = session.scalars(select(PipelineRun).order_by(PipelineRun.created_at.desc()).limit(limit)).all()
        rows = [{"id": r.id, "state": r.state, "step": r.current_step, "schedule": r.schedule, "tick": r.tick,
                 "created_at": r.created_at, "error": r.error} for r in runs]
        if json_output:
            print_json(rows)
            return
        from common.db.id_prefix import short_id

        table = Table("id", "state", "step", "schedule", "created", "error")
        for r in rows:
            table.add_row(short_id(r["id"]), r["state"], r["step"] or "", r["schedule"] or "manual", str(r["created_at"])[:19], (r["error"] or "")[:60])
        console.print(table)

    @pipeline.command("show")
    def show(run_id: str = typer.Argument(..., help="Pipeline run id, or any unique start of it."),
             json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """One run and its step jobs."""
        from rich.table import Table

        from scheduler.pipeline import pipeline_status

        status = pipeline_status(state.settings, _run_id(run_id))
        if json_output:
            print_json(status)
            return
        console.print(f"run {status['id']}: [bold]{status['state']}[/bold] (step {status['current_step']})"
                      + (f" — {status['error']}" if status["error"] else ""))
        from common.db.id_prefix import short_id
        from scheduler.cli.humanize import figure

        table = Table("step", "job", "state", "tries", "result / error")
        for step, info in status["steps"].items():
            result = info["result"] or {}
            # The few figures a person looks for, rounded, instead of JSON cut mid-string.
            detail = info["error"] or ", ".join(f"{k} {figure(v)}" for k, v in result.items()
                                                if not isinstance(v, (dict, list)))
            table.add_row(step, short_id(info["job_id"]), info["state"], str(info["attempts"]), detail)
        console.print(table)
        console.print("full results: `continuum pipeline show ID --json`", highlight=False)

    @pipeline.command("cancel")
    def cancel(run_id: str = typer.Argument(..., help="A running run (id or unique start)."),
               json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """End a running run as cancelled and cancel its live step job (a running job stops at its next heartbeat)."""
        from scheduler.pipeline import cancel_pipeline

        run_id = _run_id(run_id)
        result = cancel_pipeline(state.settings, run_id)
        if json_output:
            print_json({"id": run_id, **result})
            return
        step = f"; step job {result['job_id']} is {result['job_state']}" if result["job_id"] else ""
        console.print(f"run {run_id} cancelled{step}")

    @pipeline.command("resume")
    def resume(run_id: str = typer.Argument(..., help="A failed, cancelled or stalled run (id or unique start)."),
               params: Optional[str] = typer.Option(None, "--params", help="JSON overrides for the failed step.")) -> None:
        """Resume a run from its current step (earlier steps are not repeated); also moves a stalled running run on."""
        from scheduler.pipeline import resume_pipeline

        run_id = _run_id(run_id)
        job_id = resume_pipeline(state.settings, run_id, json.loads(params) if params else None)
        console.print(f"run {run_id} resumed: job {job_id}")

    def _run_id(given: str) -> str:
        from common.db.id_prefix import resolve_id
        from common.db.models import PipelineRun

        return resolve_id(state.sessions(), PipelineRun, given, "pipeline run", "continuum pipeline list")

    app.add_typer(pipeline, name="pipeline")
