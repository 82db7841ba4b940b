"""State shared by CLI commands: the console, the --debug flag, lazily built settings and database."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

console = Console(stderr=False)


@dataclass
class CliState:
    debug: bool = False
    _settings: Any = field(default=None, repr=False)
    _sessions: Any = field(default=None, repr=False)

    @property
    def settings(self):
        if self._settings is None:
            from common.settings import load_settings

            self._settings = load_settings().check()  # `home` is made absolute here, once
            from common.settings import Mode

            if self._settings.mode is Mode.embedded:
                from common.home import ensure_private_dir

                ensure_private_dir(self._settings.home, tighten=True)  # all feedback lives here: 0700
        return self._settings

    def sessions(self, migrate: bool = True):
        """A session factory for the configured database; embedded mode migrates on first use."""
        if self._sessions is None:
            from common.db import create_db_engine, session_factory
            from common.settings import Mode

            if migrate and self.settings.mode is Mode.embedded:
                from common.db.migrate import upgrade

                upgrade(self.settings.resolved_database_url)
            self._sessions = session_factory(create_db_engine(self.settings.resolved_database_url))
        return self._sessions


state = CliState()


def print_json(data: Any) -> None:
    """Machine-readable output for `--json` (plain stdout, no Rich markup)."""
    print(json.dumps(data, indent=2, default=str))


def progress_console(json_output: bool) -> Console:
    """Where progress bars go: stderr under `--json`, so stdout carries only the JSON document."""
    return Console(stderr=True) if json_output else console
