"""`continuum flower`: Flower on our Celery app, with basic auth from CONTINUUM_FLOWER_BASIC_AUTH."""

from __future__ import annotations

import os

import typer

from scheduler.cli.context import console, state


def register(app: typer.Typer) -> None:
    @app.command("flower")
    def flower(
        port: int = typer.Option(None, "--port", help="Listen port (default CONTINUUM_FLOWER_PORT)."),
        address: str = typer.Option("0.0.0.0", "--address", help="Listen address."),
    ) -> None:
        """Start Flower (queues, workers, tasks and their progress events)."""
        from workers.celery_app import make_celery

        settings = state.settings
        auth = settings.check_flower_auth()
        celery = make_celery(settings)
        argv = ["flower", f"--port={port or settings.flower_port}", f"--address={address}"]
        if auth:
            # Via the environment, not argv: a password on the command line is visible in `ps`.
            os.environ["FLOWER_BASIC_AUTH"] = auth
        else:
            console.print("[yellow]Flower without authentication (embedded mode, no CONTINUUM_FLOWER_BASIC_AUTH)[/yellow]")
        console.print(f"flower on http://{address}:{port or settings.flower_port}")
        celery.start(argv)
