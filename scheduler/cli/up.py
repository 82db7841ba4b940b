"""`continuum up` / `continuum down`: a long-lived embedded worker that every command reuses.

Without it each command starts its own worker for its duration (about 9 s before any job runs);
with it, a command finds the live worker and only enqueues and follows its job.
"""

from __future__ import annotations

import typer

from scheduler.cli.context import console, print_json, state


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Start the embedded worker in the background (logs: <home>/logs/worker.log)."""
        from scheduler.embedded_worker import worker_up

        state.sessions()
        result = worker_up(state.settings)
        if json_output:
            print_json(result)
        elif result["started"]:
            console.print(f"worker up (pid {result['pid']}); commands now reuse it; `continuum down` stops it",
                          highlight=False)
        else:
            console.print(f"worker already up (pid {result['pid']})", highlight=False)

    @app.command("down")
    def down(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Stop the worker `continuum up` started (a running job checkpoints and is re-queued)."""
        from scheduler.embedded_worker import worker_down

        result = worker_down(state.settings)
        if json_output:
            print_json(result)
        elif result["stopped"]:
            console.print(f"worker (pid {result['pid']}) stopped", highlight=False)
        else:
            console.print("no worker was up", highlight=False)
