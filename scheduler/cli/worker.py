"""`continuum worker`: a Celery worker that serves the queues its device can, and says so in the database.

Queues: by default the detected device's queue plus `io` (so one worker runs every job kind); add a
dedicated `continuum worker -Q io` on a busy cluster so exports and promotions never wait behind a
long training job. A CUDA worker does not take `cpu` jobs by default: a job routed to `cpu` was routed
there on purpose (or because no GPU worker was live), and would otherwise occupy the GPU slot.

Pool: a worker that serves cuda/mps/cpu uses the `solo` pool — each job already runs in its own
subprocess (killable, frees GPU memory), MPS cannot be used from forked processes, and solo lets the
worker hand jobs back cleanly on SIGTERM. An io-only worker uses `prefork` with `--concurrency`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Optional

import typer

from common.settings import Mode
from scheduler.cli.context import console, state

_DEVICES = ("auto", "cuda", "mps", "cpu")


def detect_device(requested: str) -> dict:
    """Probe the accelerator in a short-lived process (keeps torch out of the worker parent)."""
    if requested not in _DEVICES:
        raise typer.BadParameter(f"--device must be one of {', '.join(_DEVICES)}")
    if requested == "cpu":
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {"device": "cpu", "memory_bytes": memory, "name": "cpu"}
    out = subprocess.run([sys.executable, "-m", "workers.device_probe"], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    if requested != "auto" and found["device"] != requested:
        from common.errors import ConfigError

        raise ConfigError(f"--device {requested} requested but this machine has {found['device']}: use --device auto")
    return found


def plan_worker(device: str, queues: Optional[str], concurrency: Optional[int]) -> tuple[list[str], str, int]:
    """(queues, pool, concurrency) for a worker on `device`, honouring an explicit -Q."""
    from workers.kinds import ALL_QUEUES, ML_QUEUES

    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else [device, "io"]
    unknown = sorted(set(chosen) - set(ALL_QUEUES))
    if unknown:
        raise typer.BadParameter(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(ALL_QUEUES)}")
    if any(q in ML_QUEUES for q in chosen):
        if concurrency not in (None, 1):
            console.print("[yellow]device queues run one job at a time (solo pool); start more workers to scale[/yellow]")
        return chosen, "solo", 1
    return chosen, "prefork", concurrency or min(4, os.cpu_count() or 1)


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        queues: Optional[str] = typer.Option(None, "-Q", "--queues", help="Comma-separated queues (io,cpu,cuda,mps,online); default: <device>,io."),
        device: str = typer.Option("auto", "--device", help="auto (cuda > mps > cpu), cuda, mps or cpu."),
        concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", help="Processes for an io-only worker."),
        name: Optional[str] = typer.Option(None, "--name", "-n", help="Worker name; default <device>-<pid>@<host>."),
        loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Celery log level."),
    ) -> None:
        """Start a worker: detects the device, subscribes to the queues it can serve, records itself."""
        settings = state.settings
        state.sessions()  # embedded mode: migrate the database before the first job arrives
        found = detect_device(device)
        chosen, pool, procs = plan_worker(found["device"], queues, concurrency)
        from workers.celery_app import make_celery

        celery = make_celery(settings)
        celery.conf.continuum_worker_device = found["device"]
        celery.conf.continuum_worker_memory_bytes = found.get("memory_bytes")
        node = name or f"{found['device']}-{os.getpid()}@{socket.gethostname()}"
        console.print(
            f"worker [bold]{node}[/bold]: device={found['device']} ({found.get('name', '')}) "
            f"queues={','.join(chosen)} pool={pool} concurrency={procs} broker={_redacted(settings.resolved_broker_url)}"
        )
        if settings.mode is Mode.embedded:
            # No beat in embedded mode: the worker itself reaps leases and reconciles pipelines.
            import threading

            from scheduler.embedded_worker import start_sweeper

            start_sweeper(settings, threading.Event())
        celery.worker_main(
            [
                "worker", "-Q", ",".join(chosen), "-P", pool, "-c", str(procs), "-n", node, "-l", loglevel,
                "-E",  # task events for Flower
                # No mingle/gossip: cancel and state go through the ledger, and mingle adds seconds to start-up.
                "--without-mingle", "--without-gossip",
            ]
        )


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
