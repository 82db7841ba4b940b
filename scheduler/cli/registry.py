"""`continuum adapters …` and `continuum datasets …`: what has been trained, on what, and where it is."""

from __future__ import annotations

from typing import Any

import typer

from scheduler.cli.context import console, print_json, state


def _fmt(value: Any, digits: int = 2) -> str:
    from workers.evaluate.summary import fmt

    return fmt(value, digits)


def adapter_summary(session, adapter) -> dict[str, Any]:
    from workers.evaluate.summary import summary
    from workers.lineage import evaluation_of

    evaluation = evaluation_of(session, adapter.id)
    metrics = evaluation.metrics if evaluation is not None else {}
    return {
        "id": adapter.id,
        "name": adapter.name,
        "version": adapter.version,
        "parent_id": adapter.parent_id,
        "status": adapter.status,
        "dataset_ids": adapter.dataset_ids,
        "lineage": adapter.lineage,
        "base_model": adapter.base_model,
        "uri": adapter.uri,
        "created_at": adapter.created_at.isoformat() if adapter.created_at else None,
        "passed_gate": evaluation.passed_gate if evaluation is not None else None,
        **summary(metrics),
    }


def register(app: typer.Typer) -> None:
    adapters = typer.Typer(help="Published adapter versions.", no_args_is_help=True)
    datasets = typer.Typer(help="Exported datasets.", no_args_is_help=True)

    @adapters.command("list")
    def adapters_list(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Every adapter version with its evaluation summary; `*` marks production."""
        from rich.table import Table
        from sqlalchemy import select

        from common.db import Adapter, session_scope
        from workers.lineage import alias_target

        with session_scope(state.sessions()) as session:
            production = alias_target(session)
            rows = [adapter_summary(session, a) for a in session.scalars(select(Adapter).order_by(Adapter.id))]
        for row in rows:
            row["production"] = production is not None and production.id == row["id"]
        if json_output:
            print_json(rows)
            return
        # recall on what it taught; forgetting = worst since first taught; general = base answers kept.
        # Fits 80 columns: the parent and the other figures are in `adapters show` and `--json`.
        table = Table(title="adapters (* = production)", pad_edge=False)
        for column in ("id", "version", "status", "datasets", "recall", "forgot", "general", "KL"):
            table.add_column(column, no_wrap=column != "datasets")
        for r in rows:
            mark = " *" if r["production"] else ""
            table.add_row(str(r["id"]), f"{r['name']}@v{r['version']}{mark}", r["status"],
                          ",".join(map(str, r["dataset_ids"])), _fmt(r["recall"]), _fmt(r["forgetting_max"]),
                          _fmt(r["general_retention"]), _fmt(r["kl_drift"], 3))
        console.print(table)

    @adapters.command("show")
    def adapters_show(
        adapter_id: int = typer.Argument(..., help="Adapter id (see `continuum adapters list`)."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """One adapter: lineage, metrics, training figures and the alias history that touched it."""
        from sqlalchemy import or_, select

        from common.db import AliasHistory, session_scope
        from workers.lineage import evaluation_of, get_adapter

        with session_scope(state.sessions()) as session:
            adapter = get_adapter(session, adapter_id)
            info = adapter_summary(session, adapter)
            evaluation = evaluation_of(session, adapter.id)
            info["metrics"] = evaluation.metrics if evaluation is not None else None
            info["train"] = (adapter.metadata_ or {}).get("train")
            info["recipe"] = (adapter.metadata_ or {}).get("recipe")
            info["alias_history"] = [
                {"at": h.created_at.isoformat(), "alias": h.alias, "action": h.action, "from": h.from_adapter_id,
                 "to": h.to_adapter_id, "succeeded": h.succeeded, "reason": h.reason}
                for h in session.scalars(
                    select(AliasHistory)
                    .where(or_(AliasHistory.to_adapter_id == adapter.id, AliasHistory.from_adapter_id == adapter.id))
                    .order_by(AliasHistory.id)
                )
            ]
        if json_output:
            print_json(info)
            return
        console.print(f"[bold]{info['name']}@v{info['version']}[/bold] (id {info['id']}, {info['status']})")
        console.print(f"lineage: {' → '.join('v' + str(v) for v in info['lineage'])}   datasets: {info['dataset_ids']}")
        console.print(f"base model: {info['base_model']}\nuri: {info['uri']}", highlight=False)
        if info["recipe"]:
            console.print(f"recipe: {info['recipe']}", highlight=False)
        if info["train"]:
            t = info["train"]
            console.print(f"training: {t.get('steps')} steps, final loss {_fmt(t.get('final_loss'))}, "
                          f"{_fmt(t.get('useful_tokens_per_s'), 0)} tokens/s")
        console.print(f"recall {_fmt(info['recall'])}  exact match {_fmt(info['exact_match'])}  "
                      f"generalisation gain {_fmt(info['nll_gain'])}", highlight=False)
        console.print(f"forgetting max {_fmt(info['forgetting_max'])} mean {_fmt(info['forgetting_mean'])}  "
                      f"general retention {_fmt(info['general_retention'])}  KL drift {_fmt(info['kl_drift'], 3)}  "
                      f"suppression {_fmt(info['suppression'])}", highlight=False)
        for h in info["alias_history"]:
            verdict = "ok" if h["succeeded"] else "refused"
            console.print(f"  {h['at']}  {h['alias']}: {h['action']} {h['from']} → {h['to']} ({verdict}) {h['reason'] or ''}")

    @adapters.command("pull")
    def adapters_pull(
        which: str = typer.Argument(..., help="Adapter id, or an alias name such as `production`."),
        dest: str = typer.Argument(..., help="New folder to write the PEFT adapter into."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Download an adapter version as a stock PEFT folder (adapter_config.json + safetensors) to
        load with `PeftModel.from_pretrained` or serve with vLLM `--enable-lora`."""
        import shutil
        import tempfile
        from pathlib import Path

        from common.db import session_scope
        from common.errors import NotFound, ValidationError
        from common.objectstore import open_store
        from common.objectstore.artifacts import download_artifact
        from workers.lineage import adapter_prefix, alias_target, get_adapter

        target = Path(dest).expanduser().resolve()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ValidationError(f"{str(target)!r} already exists and is not an empty folder: pick a new folder")
        with session_scope(state.sessions()) as session:
            adapter = get_adapter(session, int(which)) if which.isdigit() else alias_target(session, which)
            if adapter is None:
                raise NotFound(f"alias {which!r} points at no adapter: give an adapter id (`continuum adapters list`)")
            info = {"id": adapter.id, "name": adapter.name, "version": adapter.version,
                    "base_model": adapter.base_model, "prefix": adapter_prefix(adapter)}
        # Into a sibling staging folder, then renamed: an interrupted pull leaves no half adapter at `dest`.
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=target.parent))
        try:
            download_artifact(open_store(state.settings), info["prefix"], staging)
            if target.exists():
                target.rmdir()
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        info["path"] = str(target)
        if json_output:
            print_json(info)
            return
        console.print(f"{info['name']}@v{info['version']} (id {info['id']}) → {target}", highlight=False)
        console.print(f"base model: {info['base_model']}", highlight=False)

    @datasets.command("list")
    def datasets_list(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Every exported dataset: size, split and the feedback ids it holds."""
        from rich.table import Table
        from sqlalchemy import select

        from common.db import Dataset, session_scope

        with session_scope(state.sessions()) as session:
            rows = [
                # probe is not a column: the rows neither train nor holdout (0 for pre-probe datasets).
                {"id": d.id, "uid": d.uid, "rows": d.num_rows, "train": d.num_train,
                 "probe": d.num_rows - d.num_train - d.num_holdout, "holdout": d.num_holdout,
                 "duplicates": d.num_duplicates, "skipped": d.num_skipped,
                 "feedback_ids": [d.min_feedback_id, d.max_feedback_id], "uri": d.uri,
                 "created_at": d.created_at.isoformat()}
                for d in session.scalars(select(Dataset).order_by(Dataset.id))
            ]
        if json_output:
            print_json(rows)
            return
        # Fits 80 columns; the full uid and the creation time are in `--json`.
        table = Table(title="datasets", pad_edge=False)
        for column in ("id", "uid", "rows", "train", "probe", "holdout", "dups", "skipped", "feedback ids"):
            table.add_column(column, no_wrap=True)
        for r in rows:
            table.add_row(str(r["id"]), r["uid"][:8], str(r["rows"]), str(r["train"]), str(r["probe"]),
                          str(r["holdout"]), str(r["duplicates"]), str(r["skipped"]),
                          f"{r['feedback_ids'][0]}–{r['feedback_ids'][1]}")
        console.print(table)

    app.add_typer(adapters, name="adapters")
    app.add_typer(datasets, name="datasets")
