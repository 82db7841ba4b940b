"""`continuum model …`: the built-in tiny model (written once, identical on every worker)."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.context import console, print_json, state


def register(app: typer.Typer) -> None:
    model = typer.Typer(help="Base models.", no_args_is_help=True)

    @model.command("init-tiny")
    def init_tiny(
        path: Path = typer.Argument(..., help="Directory to write the model and tokenizer to."),
        seed: int = typer.Option(0, "--seed", help="Initialisation seed; the same seed gives identical weights."),
        size: str = typer.Option("tiny", "--size", help="tiny (~3M parameters) or small (~20M, for benchmarks)."),
        store_prefix: str = typer.Option(
            None, "--store-prefix", help="Also publish the model to the object store under this key prefix."
        ),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Write the built-in tiny Qwen2-style model (safetensors) and its tokenizer to PATH."""
        from workers.learning.tiny import SIZES, write_tiny_model

        if size not in SIZES:
            raise typer.BadParameter(f"choose one of {', '.join(SIZES)}", param_hint="--size")
        written = write_tiny_model(path, seed=seed, size=size)
        result = {"path": str(written), "seed": seed, "size": size}
        if store_prefix:
            from common.objectstore import open_store
            from common.objectstore.artifacts import publish_artifact

            files = {p.relative_to(written).as_posix(): p for p in sorted(written.rglob("*")) if p.is_file()}
            store = open_store(state.settings)
            publish_artifact(store, store_prefix, files, {"kind": "base_model", "seed": seed, "size": size})
            result["store"] = f"{store.url}/{store_prefix}"
        if as_json:
            print_json(result)
        else:
            where = f" and {result['store']}" if store_prefix else ""
            console.print(f"tiny model ({size}, seed {seed}) written to [bold]{written}[/bold]{where}")

    app.add_typer(model, name="model")
