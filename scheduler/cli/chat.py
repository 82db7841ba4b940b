"""`continuum chat`: a terminal chat with the served adapter, with feedback on each answer.

It talks to `continuum serve` over HTTP (`--url`, default the configured address and port). With no
server there, it starts one for the session and stops it at the end, so `continuum chat` alone works on
a laptop. Commands: /good and /bad judge the last answer (stored as feedback, learnt by the next
cycle), /stats shows the server's figures, /facts the fact memory, /new starts a new conversation,
/quit leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

import typer

from scheduler.cli.context import console, state

HELP = "/good /bad judge the last answer · /stats · /facts · /new conversation · /quit"


class ServeClient:
    """The few calls the chat makes, with the bearer token from the environment."""

    def __init__(self, url: str, token: str, timeout: float = 300):
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def healthy(self) -> bool:
        import requests

        try:
            return self.session.get(f"{self.url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def get(self, path: str) -> Any:
        response = self.session.get(f"{self.url}{path}", timeout=self.timeout)
        return _json_or_error(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.post(f"{self.url}{path}", json=body, timeout=self.timeout)
        return _json_or_error(response)

    def stream(self, model: str, messages: list[dict[str, str]]):
        """Yields (response id, model, text piece) as the answer arrives."""
        with self.session.post(f"{self.url}/v1/chat/completions", stream=True, timeout=self.timeout,
                               json={"model": model, "messages": messages, "stream": True}) as response:
            if not response.ok:
                _json_or_error(response)
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                delta = event["choices"][0]["delta"]
                yield event["id"], event["model"], delta.get("content") or ""


def _json_or_error(response: Any) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not response.ok:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        raise RuntimeError(f"{response.status_code}: {message or response.text[:200]}")
    return body


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat(
        url: Optional[str] = typer.Option(None, "--url", help="A running `continuum serve` (default: the configured "
                                          "address and port; started for this session if nothing answers there)."),
        model: str = typer.Option("production", "--model", help="`production`, a lineage, `name@vN` or `base`."),
    ) -> None:
        """Chat with the served adapter in the terminal; /good and /bad send feedback on the last answer."""
        settings = state.settings
        token = os.environ.get("CONTINUUM_SERVE_TOKEN", "") or settings.serve_token.get_secret_value()
        client = ServeClient(url or f"http://{settings.serve_address}:{settings.serve_port}", token)
        server = None
        if not client.healthy():
            if url:
                raise typer.BadParameter(f"nothing answers at {url}: start `continuum serve` there or drop --url")
            server = _start_server(client, settings)
        try:
            _loop(client, model)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=20)


def _start_server(client: ServeClient, settings: Any) -> subprocess.Popen:
    log = settings.home / "logs" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with console.status("starting `continuum serve` for this session"):
        server = subprocess.Popen([sys.executable, "-m", "scheduler", "serve"], stdout=log.open("a"),
                                  stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not client.healthy():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`continuum serve` did not start: see {log}")
            time.sleep(0.3)
    return server


def _loop(client: ServeClient, model: str) -> None:
    from rich.table import Table

    console.print(f"[dim]{HELP}[/dim]")
    messages: list[dict[str, str]] = []
    last_id: str | None = None
    while True:
        try:
            line = console.input("[bold]you>[/bold] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/new":
            messages, last_id = [], None
            console.print("[dim]new conversation[/dim]")
            continue
        if line in ("/good", "/bad"):
            if last_id is None:
                console.print("[yellow]no answer to judge yet[/yellow]")
                continue
            verdict = "thumbs_up" if line == "/good" else "thumbs_down"
            result = client.post("/v1/feedback", {"response_id": last_id, "feedback": verdict})
            console.print(f"[dim]{'stored' if result['stored'] else 'already judged'}: {verdict}[/dim]")
            continue
        if line == "/stats":
            table = Table(show_header=False, box=None)
            figures = client.get("/v1/stats")
            online = figures.pop("online", None)
            for key, value in figures.items():
                table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else str(value))
            console.print(table)
            if online:
                _print_online(online)
            continue
        if line == "/facts":
            _print_facts(client.get("/v1/facts"))
            continue
        if line.startswith("/"):
            console.print(f"[yellow]unknown command {line}[/yellow] — {HELP}")
            continue
        messages.append({"role": "user", "content": line})
        console.print("[bold]model>[/bold] ", end="")
        text, served = "", model
        for last_id, served, piece in client.stream(model, messages):
            text += piece
            console.print(piece, end="", markup=False, highlight=False)
        console.print(f"  [dim]({served})[/dim]")
        messages.append({"role": "assistant", "content": text})


def _print_online(online: dict) -> None:
    """The online learner's figures: stability, plasticity, forgetting, and what it published."""
    from rich.table import Table

    metrics = online.get("metrics") or {}
    table = Table(title="online learning", show_header=False, box=None)
    table.add_row("turns", f"{online['turns_learnt']} learnt, {online['turns_waiting']} waiting")
    table.add_row("facts", str(online["facts"]))
    for part in ("stability", "plasticity", "forgetting"):
        values = metrics.get(part) or {}
        table.add_row(part, ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items()) or "–")
    published = online.get("last_published")
    table.add_row("versions", (f"last v{published['version']} ({published.get('reason', '')})" if published
                               else "none published yet")
                  + (f"; {online['unpublished_updates']} turns since" if online.get("unpublished_updates") else ""))
    console.print(table)


def _print_facts(body: dict[str, Any]) -> None:
    from rich.table import Table

    facts = body.get("facts", [])
    if not facts:
        console.print(f"[dim]{body.get('note') or 'the fact memory is empty'}[/dim]")
        return
    table = Table("fact", "relation", "seen", "importance")
    for fact in facts:
        table.add_row(fact["text"], fact.get("relation") or "", str(fact.get("times_seen", "")),
                      f"{fact.get('importance', 0):.2f}")
    console.print(table)
