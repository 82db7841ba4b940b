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

    quarantine = typer.Typer(help="Rows an import refused, with their line number and reason.",
                             no_args_is_help=True)

    @quarantine.command("list")
    def quarantine_list(
        limit: int = typer.Option(30, "--limit", help="Newest N rows."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Quarantined rows, newest first: id, file and line, reason."""
        from rich.table import Table

        rows = [_quarantined(r) for r in _quarantine_rows(limit=limit)]
        if json_output:
            print_json(rows)
            return
        table = Table("id", "file:line", "reason")
        for r in rows:
            where = f"{Path(r['source']).name}:{r['line_number']}"
            table.add_row(str(r["id"]), where, r["reason"][:60] + ("…" if len(r["reason"]) > 60 else ""))
        console.print(table)
        if not rows:
            console.print("no quarantined rows")

    @quarantine.command("show")
    def quarantine_show(
        row_id: int = typer.Argument(..., help="Quarantine row id (see `continuum feedback quarantine list`)."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """One quarantined row: where it came from, why it was refused, and the raw line."""
        row = _quarantined(_quarantine_rows(row_ids=[row_id])[0])  # NotFound when missing
        if json_output:
            print_json(row)
            return
        console.print(f"quarantined row {row['id']}: {row['source']} line {row['line_number']}", highlight=False)
        console.print(f"reason: {row['reason']}", highlight=False, markup=False)
        console.print(f"raw: {row['raw']}", highlight=False, markup=False)

    @quarantine.command("drop")
    def quarantine_drop(
        row_ids: list[int] = typer.Argument(None, help="Quarantine row ids to delete."),
        all_rows: bool = typer.Option(False, "--all", help="Delete every quarantined row."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Delete quarantined rows once fixed and re-imported (or judged worthless)."""
        from sqlalchemy import delete

        from common.db.engine import session_scope
        from common.db.models import FeedbackQuarantine
        from common.errors import ValidationError

        if not row_ids and not all_rows:
            raise ValidationError("name the quarantine row ids to drop, or pass --all")
        if row_ids:
            _quarantine_rows(row_ids=row_ids)  # every id must exist: nothing is deleted otherwise
        statement = delete(FeedbackQuarantine)
        if not all_rows:
            statement = statement.where(FeedbackQuarantine.id.in_(row_ids))
        with session_scope(state.sessions()) as session:
            dropped = session.execute(statement).rowcount
        if json_output:
            print_json({"dropped": dropped})
        else:
            console.print(f"dropped {dropped} quarantined row(s)")

    feedback.add_typer(quarantine, name="quarantine")
    app.add_typer(feedback, name="feedback")


def _quarantined(row) -> dict:
    return {"id": row.id, "source": row.source, "line_number": row.line_number, "reason": row.reason,
            "raw": row.raw, "created_at": row.created_at}


def _quarantine_rows(limit: int | None = None, row_ids: list[int] | None = None) -> list:
    """Quarantine rows (newest first), or exactly `row_ids` (NotFound naming any that is missing)."""
    from sqlalchemy import select

    from common.db.engine import session_scope
    from common.db.models import FeedbackQuarantine
    from common.errors import NotFound

    query = select(FeedbackQuarantine).order_by(FeedbackQuarantine.id.desc())
    if row_ids is not None:
        query = query.where(FeedbackQuarantine.id.in_(row_ids))
    if limit is not None:
        query = query.limit(limit)
    with session_scope(state.sessions()) as session:
        rows = list(session.scalars(query))
    if row_ids is not None:
        missing = sorted(set(row_ids) - {r.id for r in rows})
        if missing:
            raise NotFound(f"no quarantined row {', '.join(map(str, missing))}: list them with "
                           "`continuum feedback quarantine list`")
    return rows
