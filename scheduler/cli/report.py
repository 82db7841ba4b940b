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
        from scheduler.report.page import comparison_rows, online_rows, summary_rows

        settings = state.settings
        out_dir = out or settings.home / "report"
        gate = Gate.from_settings(settings)
        with console.status("drawing the report…"), state.sessions()() as session:
            files = build_report(session, out_dir, alias=alias, lineages=lineage or None, gate=gate)
        rows = summary_rows(files.data)
        if json_output:
            print_json({"html": str(files.html), "pngs": [str(p) for p in files.pngs], "versions": rows,
                        "online": online_rows(files.data, last=1000), "documents": comparison_rows(files.data)})
            return
        if not rows:
            console.print("no adapter versions yet: run `continuum demo` or a pipeline first")
            _print_comparison(files.data)
            console.print(f"report: [bold]{files.html.resolve()}[/bold]")
            return
        from rich.table import Table

        # The terminal gets the headline columns only (fits 80 columns); the page has them all.
        table = Table(title=f"adapter versions (* = {alias}: {files.data.holder() or 'nobody'})", pad_edge=False)
        columns = {"version": "version", "recall": "recall", "forgetting max": "forgot\nmax",
                   "forgetting mean": "forgot\nmean", "general retention": "general", "KL drift": "KL\ndrift",
                   "gate": "gate"}
        for key, header in columns.items():
            table.add_column(header, justify="left" if key in ("version", "gate") else "right", no_wrap=True)
        for row in rows:
            holds = row["status"].endswith(f"({alias})")
            cells = [row["version"] + (" *" if holds else "")] + [row[key] for key in list(columns)[1:]]
            table.add_row(*cells, style="bold green" if holds else None)
        console.print(table)
        online = online_rows(files.data, last=1)
        if online:
            # The last online job of each lineage: stability, plasticity and forgetting in one line each.
            for row in online:
                console.print(f"online {row['lineage']}: {row['turns']} turns, {row['facts']} facts, ppl drift "
                              f"{row['ppl drift']}, KL {row['KL to base']}, recent loss {row['recent loss']}, "
                              f"regression {row['regression']}, last published {row['published']}")
        _print_comparison(files.data)
        console.print(f"report: [bold]{files.html.resolve()}[/bold] (+ {len(files.pngs)} PNGs)")


def _print_comparison(data) -> None:
    """The latest documents comparison, one line: each strategy's QA accuracy and forgetting."""
    if not data.comparisons:
        return
    latest = data.comparisons[-1]
    figures = ", ".join(f"{f.strategy} QA {_number(f.qa_accuracy)} forgetting {_number(f.forgetting_ratio)}"
                        for f in latest.strategies)
    console.print(f"documents compare {latest.at:%Y-%m-%d %H:%M}: {figures}", highlight=False)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
