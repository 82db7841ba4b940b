"""`continuum config …`: what can be configured, and what is configured now."""

from __future__ import annotations

import typer

from scheduler.cli.context import print_json


def _mask_url_password(url: str) -> str:
    """`redis://:secret@host` → `redis://:***@host`: URLs carry passwords too."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def register(app: typer.Typer) -> None:
    config = typer.Typer(help="Settings: the reference and the current values.", no_args_is_help=True)

    @config.command("reference")
    def reference() -> None:
        """Print every setting (env var, type, default, help) as a Markdown table."""
        from scheduler.config_reference import render_table

        # Plain stdout, not Rich: the output is Markdown meant to be piped into docs.
        print(render_table(), end="")

    @config.command("show")
    def show(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Print the settings this process would use (secrets masked), without checking them."""
        from pydantic import SecretStr

        from common.settings import load_settings

        settings = load_settings()
        values = {}
        for name, value in settings:
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                value = _mask_url_password(value)
            values[f"CONTINUUM_{name.upper()}"] = getattr(value, "value", value)
        if json_output:
            print_json(values)
            return
        from rich.table import Table

        from scheduler.cli.context import console

        table = Table("Variable", "Value")
        for key, value in values.items():
            table.add_row(key, str(value))
        console.print(table)

    app.add_typer(config, name="config")
