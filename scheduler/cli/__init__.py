"""The `continuum` command line (Typer + Rich).

Each topic lives in its own module exposing `register(app)`; this file only assembles them and turns
our exceptions into one clear line (no traceback unless `--debug`).
"""

from __future__ import annotations

import importlib
import sys

import typer

from scheduler.cli.context import console, state

app = typer.Typer(
    name="continuum",
    help="Keep a LoRA adapter learning from user feedback, cycle after cycle, without forgetting.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: typer's rich help marks every flag (--debug, --help, --json) `<bool>`, as if
    # it took a value, and its boxes leave less of 80 columns for the text.
    rich_markup_mode=None,
)

# Topic modules, each with `register(app)`. Listed, not discovered, so the CLI's shape is explicit.
_TOPICS = [
    "scheduler.cli.db",
    "scheduler.cli.feedback",
    "scheduler.cli.export",
    "scheduler.cli.documents",
    "scheduler.cli.config",
    "scheduler.cli.report",
    "scheduler.cli.worker",
    "scheduler.cli.up",
    "scheduler.cli.registry",
    "scheduler.cli.pipeline",
    "scheduler.cli.beat",
    "scheduler.cli.flower",
    "scheduler.cli.model",
    "scheduler.cli.jobs",
    "scheduler.cli.ml",
    "scheduler.cli.demo",
    "scheduler.cli.serve",
    "scheduler.cli.chat",
]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    state.debug = debug


for _module in _TOPICS:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Console-script entry point."""
    from common.errors import ContinuumError

    try:
        # Without standalone mode click *returns* a command's `typer.Exit(code)` instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted", style="red")
        sys.exit(130)
    except ContinuumError as exc:
        if state.debug:
            raise
        _print_error(str(exc))
        sys.exit(1)
    except Exception as exc:  # click usage errors and anything unexpected
        # Typer vendors its own click, so usage errors are recognised by shape, not by class.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if state.debug:
            raise
        _print_error(f"{exc.__class__.__name__}: {exc} (rerun with --debug for the traceback)")
        sys.exit(1)


def _print_error(message: str) -> None:
    """One line on stderr (stdout stays clean for `--json`): no wrapping, no markup read from the message."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "red"), " ".join(message.split())))
