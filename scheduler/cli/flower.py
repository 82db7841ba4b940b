"""`continuum flower`: Flower on our Celery app, with basic auth from CONTINUUM_FLOWER_BASIC_AUTH."""

from __future__ import annotations

import os
from typing import Optional

import typer

from scheduler.cli.context import console, state


def register(app: typer.Typer) -> None:
    @app.command("flower")
    def flower(
        port: int = typer.Option(None, "--port", help="Listen port (default CONTINUUM_FLOWER_PORT)."),
        address: Optional[str] = typer.Option(
            None, "--address", help="Listen address (default CONTINUUM_FLOWER_ADDRESS, 127.0.0.1)."),
    ) -> None:
        """Start Flower (queues, workers, tasks and their progress events)."""
        from workers.celery_app import make_celery

        settings = state.settings
        address = address or settings.flower_address  # loopback unless told: Flower can revoke tasks
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
