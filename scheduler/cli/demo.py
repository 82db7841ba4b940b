"""`continuum demo` and `continuum init`: the first things a new user runs."""

from __future__ import annotations

import typer

from scheduler.cli.context import console, print_json, progress_console, state


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init() -> None:
        """Create the embedded home, migrate the database and store the built-in tiny model."""
        from common.db.migrate import upgrade
        from common.objectstore import open_store
        from workers.base_model import resolve_base_model

        settings = state.settings
        upgrade(settings.resolved_database_url)
        with console.status("building the tiny model"):
            path = resolve_base_model(settings, open_store(settings))
        console.print(f"database: {settings.resolved_database_url}\nobjects:  {settings.resolved_storage_url}\n"
                      f"model:    {path}\nnext: `continuum feedback import FILE`, then `continuum pipeline run --wait`",
                      highlight=False)

    @app.command("demo")
    def demo(
        model: str = typer.Option("tiny", "--model", help="tiny (built in), or a registered model name or model "
                                  "folder, e.g. smollm2-135m-instruct after `continuum model add`."),
        rounds: int = typer.Option(0, "--rounds", min=0, max=10,
                                   help="Feedback rounds, one continual cycle each (0: 3 tiny, 2 real)."),
        facts: int = typer.Option(0, "--facts", min=0, help="Made-up facts taught per round (0: 32 tiny, 30 real)."),
        epochs: int = typer.Option(0, "--epochs", min=0, help="Epochs per cycle (0: the cycle default)."),
        naive: bool = typer.Option(True, "--naive/--no-naive", help="Also train the naive recipe for comparison."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Full continual cycles on the embedded default: synthetic feedback, a real worker, the tiny model
        (minutes) or a real one with --model (each cycle takes minutes on a CPU)."""
        import time

        from scheduler.demo.run import DemoOptions, real_model_path, run_demo
        from scheduler.demo.table import CAPTION, cycle_table

        started = time.monotonic()
        real = model != "tiny"
        model_path = real_model_path(state.settings, model) if real else None  # fails fast, naming the fix
        rounds = rounds or (2 if real else 3)
        facts = facts or (30 if real else 32)
        # With --json, stdout carries only the JSON document: progress and tables go to stderr.
        out = progress_console(json_output)
        example = "'What sigil does House Qualon bear?'" if real else "'the capital of Zorvania…'"
        out.print(f"[bold]continuum demo[/bold] — synthetic feedback: invented facts ({example}) "
                  "that simulated users teach the assistant, one round per cycle.")
        rows, settings = run_demo(state.settings, DemoOptions(rounds=rounds, facts_per_round=facts, epochs=epochs,
                                                               naive=naive, model_path=model_path), out)
        table, data = cycle_table(rows, with_naive=naive)
        report_dir = settings.home / "report"
        from common.db.engine import session_scope
        from scheduler.report.build import build_report
        from workers.resources import resources_for

        with session_scope(resources_for(settings).sessions) as session:
            files = build_report(session, report_dir, lineages=["default", "naive"] if naive else ["default"])
        if json_output:
            print_json({"cycles": data, "report": str(files.html), "seconds": time.monotonic() - started})
            return
        console.print(table)
        console.print(CAPTION, highlight=False)
        console.print(f"report: {files.html}   ({time.monotonic() - started:.0f}s in all)", highlight=False)
