"""`continuum jobs …`: list, show, cancel and retry jobs in the ledger."""

from __future__ import annotations

from typing import Optional

import typer

from scheduler.cli.context import console, print_json, state


def _row(job) -> dict:
    return {"id": job.id, "kind": job.kind, "params": job.params, "queue": job.queue, "state": job.state,
            "attempts": job.attempts, "max_attempts": job.max_attempts, "lease_owner": job.lease_owner,
            "progress": job.progress,
            "result": job.result, "error": job.error, "pipeline_run_id": job.pipeline_run_id,
            "created_at": job.created_at, "finished_at": job.finished_at}


def register(app: typer.Typer) -> None:
    jobs = typer.Typer(help="Jobs in the ledger (the source of truth; Celery only carries their ids).",
                       no_args_is_help=True)

    def ledger():
        from workers.resources import resources_for

        state.sessions()
        return resources_for(state.settings).ledger

    @jobs.command("list")
    def list_jobs(
        job_state: Optional[str] = typer.Option(None, "--state", help="Only jobs in this state."),
        limit: int = typer.Option(30, "--limit", help="Newest N jobs."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Recent jobs, newest first."""
        from rich.table import Table

        rows = [_row(job) for job in ledger().list(state=job_state, limit=limit)]
        if json_output:
            print_json(rows)
            return
        from common.db.id_prefix import short_id

        table = Table("id", "kind", "queue", "state", "tries", "progress", "error")
        for r in rows:
            progress = r["progress"] or {}
            step = f"{progress.get('step')}/{progress.get('total')}" if "step" in progress else ""
            table.add_row(short_id(r["id"]), r["kind"], r["queue"], r["state"], f"{r['attempts']}/{r['max_attempts']}", step,
                          (r["error"] or "")[:50])
        console.print(table)

    @jobs.command("show")
    def show(job_id: str = typer.Argument(..., help="Job id, or any unique start of it."),
             json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """One job: state, attempts, lease, progress, result or error."""
        jobs_ledger = ledger()
        row = _row(jobs_ledger.get(jobs_ledger.resolve(job_id)))
        if json_output:
            print_json(row)
            return
        from scheduler.cli.humanize import result_lines

        console.print(f"job {row['id']}: {row['kind']} on {row['queue']}, {row['state']} "
                      f"(try {row['attempts']} of {row['max_attempts']})", highlight=False)
        details = {"created": row["created_at"], "finished": row["finished_at"], "lease": row["lease_owner"],
                   "pipeline run": row["pipeline_run_id"], "params": row["params"] or None,
                   "progress": row["progress"] or None, "result": row["result"] or None, "error": row["error"]}
        for line in result_lines({k: v for k, v in details.items() if v not in (None, "")}):
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    @jobs.command("cancel")
    def cancel(job_id: str = typer.Argument(..., help="Job id, or any unique start of it.")) -> None:
        """Cancel: a queued job at once, a running one within seconds (its process is stopped)."""
        jobs_ledger = ledger()
        job_id = jobs_ledger.resolve(job_id)
        new_state = jobs_ledger.request_cancel(job_id)
        console.print(f"job {job_id}: {new_state.value}" + (" (stopping)" if new_state.value == "running" else ""))

    @jobs.command("retry")
    def retry(job_id: str = typer.Argument(..., help="A failed or cancelled job (id or unique start)."),
              attempts: int = typer.Option(1, "--attempts", help="Extra attempts to allow.")) -> None:
        """Put a failed or cancelled job back in its queue (dead letter → queued)."""
        from workers.celery_app import app_for
        from workers.dispatch import send_job

        jobs_ledger = ledger()
        job_id = jobs_ledger.resolve(job_id)
        job = jobs_ledger.retry(job_id, extra_attempts=attempts)
        send_job(app_for(state.settings), job)
        console.print(f"job {job_id} queued again on {job.queue}")

    app.add_typer(jobs, name="jobs")
