"""`continuum beat`: start pipeline runs on the schedule and reap expired job leases.

Run exactly one in production; a second one by mistake still creates one run per tick (unique key).
"""

from __future__ import annotations

import typer

from scheduler.cli.context import console, state


def register(app: typer.Typer) -> None:
    @app.command("beat")
    def beat() -> None:
        """Run the scheduler loop (CONTINUUM_PIPELINE_SCHEDULE, default Monday 02:00 UTC) and the reaper."""
        import logging
        import signal
        import threading

        from scheduler.beat import beat_for

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/beat] %(message)s")
        settings = state.settings
        state.sessions()
        loop = beat_for(settings)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        for entry in loop.entries:
            console.print(f"beat: schedule [bold]{entry.name}[/bold] = {entry.spec!r}; reaper every "
                          f"{settings.reaper_interval_seconds:g}s")
        loop.run(stop)
        console.print("beat stopped")
