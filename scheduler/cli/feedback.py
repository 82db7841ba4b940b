"""`continuum feedback …`: getting user feedback into the database."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.context import console, print_json, state


def register(app: typer.Typer) -> None:
    feedback = typer.Typer(help="User feedback (thumbs up/down on model responses).", no_args_is_help=True)

    @feedback.command("import")
    def import_(
        file: Path = typer.Argument(..., help="JSONL file: one {prompt, response, feedback} or {messages, feedback} per line."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Import a JSONL file; bad rows go to quarantine with their line number and reason.

        Exits non-zero only when the file held no valid row at all.
        """
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        from common.errors import PermanentError
        from common.feedback import import_feedback_file

        if not file.is_file():
            raise PermanentError(f"feedback file {str(file)!r} does not exist or is not a file: check the path")
        sessions = state.sessions()
        with Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=json_output,
        ) as bar:
            task = bar.add_task(f"importing {file.name}", total=file.stat().st_size)
            summary = import_feedback_file(
                sessions, state.settings, file, progress=lambda done: bar.update(task, completed=done)
            )
        if json_output:
            print_json(summary.as_dict())
        else:
            from rich.table import Table

            table = Table("inserted", "duplicate", "quarantined", title=f"feedback import: {file}")
            table.add_row(str(summary.inserted), str(summary.duplicate), str(summary.quarantined))
            console.print(table)
            for problem in summary.first_problems:
                console.print(f"[yellow]quarantined[/yellow] {problem}", highlight=False)
            if summary.quarantined > len(summary.first_problems):
                console.print(f"… {summary.quarantined - len(summary.first_problems)} more in the feedback_quarantine table")
        if summary.inserted + summary.duplicate == 0:
            # A ContinuumError: the CLI entry point prints it as one line and exits 1.
            raise PermanentError(
                f"no valid feedback row in {str(file)!r} ({summary.quarantined} quarantined): fix the rows and import again"
            )

    app.add_typer(feedback, name="feedback")
