"""`continuum serve`: the production adapter behind an OpenAI-compatible HTTP API (see workers/serve)."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from scheduler.cli.context import console, state


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        port: Optional[int] = typer.Option(None, "--port", help="Listen port (default CONTINUUM_SERVE_PORT, 8400)."),
        address: Optional[str] = typer.Option(
            None, "--address", help="Listen address (default CONTINUUM_SERVE_ADDRESS, 127.0.0.1)."),
        adapter: Optional[str] = typer.Option(
            None, "--adapter", help="An alias to follow or a fixed adapter id (default CONTINUUM_SERVE_ADAPTER, "
            "production)."),
    ) -> None:
        """Answer chat requests with the base model + the adapter production points to; follow its moves."""
        import uvicorn

        from common.objectstore import check_store, open_store
        from workers.base_model import base_model_id, resolve_base_model
        from workers.learning.device import select_device
        from workers.learning.models import load_model_and_tokenizer
        from workers.serve.app import create_app
        from workers.serve.engine import ChatEngine
        from workers.serve.follow import Follower

        settings = state.settings
        token = settings.check_serve_token()  # before the model loads: a refused start costs seconds
        address = address or settings.serve_address
        port = port or settings.serve_port
        target = adapter or settings.serve_adapter
        sessions = state.sessions()
        check_store(settings)
        store = open_store(settings)
        device = select_device(settings.device, load_in_4bit=settings.load_in_4bit)
        with console.status(f"loading {base_model_id(settings)} on {device.device}"):
            model, tokenizer = load_model_and_tokenizer(resolve_base_model(settings, store), device)
        engine = ChatEngine(model, tokenizer, base_model_id(settings), settings.serve_max_adapters)
        follower = Follower(engine, sessions, store, target, settings.home / "scratch" / "serve")
        if target.isdigit():
            follower.poll()  # a fixed id that cannot load is an error now, not a log line later
        else:
            follower.poll_logged()
        serving = engine.followed()
        what = next(iter(serving.values())).name if serving else f"the base model ({target} points at no adapter yet)"
        follower.start(settings.serve_poll_seconds)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        console.print(f"serving {what} on http://{address}:{port}/v1 "
                      f"({'bearer token required' if token else 'no token: embedded mode'}; "
                      f"following {target})")
        try:
            uvicorn.run(create_app(engine, follower, sessions, settings, token), host=address, port=port,
                        log_level="warning")
        finally:
            follower.stop()
