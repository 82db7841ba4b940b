"""`continuum export`: turn new feedback into a dataset, as a queued `export` job like every other step."""

from __future__ import annotations

from typing import Any, Optional

import typer

from scheduler.cli.context import console, print_json, progress_console, state


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        min_rows: Optional[int] = typer.Option(None, "--min-rows", help="Override CONTINUUM_EXPORT_MIN_ROWS."),
        wait: bool = typer.Option(True, "--wait/--no-wait",
                                  help="Follow the job until it ends (starts an embedded worker if needed)."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Claim the unexported feedback rows and publish them as one dataset (gzip JSONL + manifest).

        Runs as an `export` job (see `continuum jobs show ID`); a crashed one is retried with
        `continuum jobs retry ID`, which publishes the same dataset, never a second one.
        """
        from scheduler.jobwait import run_job

        settings = state.settings
        state.sessions()
        params: dict[str, Any] = {"min_rows": min_rows} if min_rows is not None else {}
        result = run_job(settings, "export", params, progress_console(json_output), wait=wait)
        if json_output:
            print_json(result)
            return
        if not wait:
            console.print(f"export job {result['job_id']} queued", highlight=False)
            return
        if result.get("status") == "skipped":
            console.print(f"[yellow]export skipped: {result['reason']}[/yellow] (rows left for the next export)",
                          highlight=False)
            return
        from rich.table import Table

        table = Table("dataset", "claimed", "train", "probe", "holdout", "duplicates", "skipped")
        table.add_row(*(str(result.get(k)) for k in ("dataset_id", "claimed", "train", "probe", "holdout",
                                                      "duplicates", "skipped")))
        console.print(table)
        console.print(f"dataset {result['dataset_id']} (uid {result['dataset_uid']}): train it with "
                      f"`continuum train --dataset {result['dataset_id']}`; job {result['job_id']}", highlight=False)
