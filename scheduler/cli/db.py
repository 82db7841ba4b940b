"""`continuum db …`: schema migrations."""

from __future__ import annotations

import typer

from scheduler.cli.context import console, state


def register(app: typer.Typer) -> None:
    db = typer.Typer(help="Database schema.", no_args_is_help=True)

    @db.command("upgrade")
    def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
        """Migrate the database to the newest schema (safe to run again)."""
        from common.db.migrate import upgrade as run_upgrade

        run_upgrade(state.settings.resolved_database_url, revision)
        console.print(f"database at [bold]{revision}[/bold]")

    app.add_typer(db, name="db")
