"""`continuum export`: turn new feedback into a dataset shard, here and now (no worker needed)."""

from __future__ import annotations

from typing import Optional

import typer

from scheduler.cli.context import console, print_json, state


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        job_id: Optional[str] = typer.Option(
            None, "--job-id", help="Retry a crashed export under its job id (same dataset); default: a new id."
        ),
        min_rows: Optional[int] = typer.Option(None, "--min-rows", help="Override CONTINUUM_EXPORT_MIN_ROWS."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Claim the unexported feedback rows and publish them as one dataset (gzip JSONL + manifest)."""
        import uuid

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from common.objectstore import open_store
        from workers.export import ExportConfig, export_feedback

        settings = state.settings
        overrides = {"min_rows": min_rows} if min_rows is not None else {}
        config = ExportConfig.from_settings(settings, **overrides)
        job_id = job_id or str(uuid.uuid4())
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=json_output,
        ) as bar:
            task = bar.add_task("exporting", total=None)
            result = export_feedback(
                state.sessions(),
                open_store(settings),
                config,
                job_id,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        if json_output:
            print_json({"job_id": job_id, **result.as_dict()})
            return
        if result.status == "skipped":
            console.print(f"[yellow]export skipped: {result.reason}[/yellow] (rows left for the next export)", highlight=False)
            return
        from rich.table import Table

        table = Table("claimed", "rows", "train", "probe", "holdout", "duplicates", "skipped",
                      title=f"dataset {result.dataset_uid}")
        table.add_row(*(str(v) for v in (result.claimed, result.rows, result.train, result.probe, result.holdout,
                                          result.duplicates, result.skipped)))
        console.print(table)
        console.print(f"uri: {result.uri}\njob id: {job_id}", highlight=False)
