"""`continuum report`: the adapter history as an HTML page with plots, and a summary in the terminal."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.context import console, print_json, state


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        out: Path = typer.Option(
            None, "--out", "-o", help="Folder for index.html and the PNGs; default <home>/report."
        ),
        alias: str = typer.Option("production", "--alias", help="Alias whose history the timeline shows."),
        lineage: list[str] = typer.Option(None, "--lineage", help="Adapter lineage(s) to include; default all."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Write a self-contained HTML report (accuracy matrix, forgetting, loss, production timeline)."""
        from scheduler.report import Gate, build_report
        from scheduler.report.page import summary_rows

        settings = state.settings
        out_dir = out or settings.home / "report"
        gate = Gate(
            max_forgetting=getattr(settings, "promote_max_forgetting", None),
            min_plasticity=getattr(settings, "promote_min_plasticity", None),
        )
        with console.status("drawing the report…"), state.sessions()() as session:
            files = build_report(session, out_dir, alias=alias, lineages=lineage or None, gate=gate)
        rows = summary_rows(files.data)
        if json_output:
            print_json({"html": str(files.html), "pngs": [str(p) for p in files.pngs], "versions": rows})
            return
        if not rows:
            console.print("no adapter versions yet: run `continuum demo` or a pipeline first")
            console.print(f"report: [bold]{files.html.resolve()}[/bold]")
            return
        from rich.table import Table

        table = Table(title=f"adapter versions ({alias}: {files.data.holder() or 'nobody'})")
        for column in rows[0]:
            table.add_column(column, justify="left" if column in ("version", "created", "status", "gate", "datasets") else "right")
        for row in rows:
            table.add_row(*row.values(), style="bold green" if row["status"].endswith(f"({alias})") else None)
        console.print(table)
        console.print(f"report: [bold]{files.html.resolve()}[/bold] (+ {len(files.pngs)} PNGs)")
