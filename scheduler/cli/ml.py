"""`continuum fisher | train | evaluate | promote | rollback`: one job at a time, through the queue.

Each command enqueues its job and (unless `--no-wait`) follows it with a progress bar; in embedded mode
a worker is started for the duration when none is running, so the same code path runs as in production.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from scheduler.cli.context import console, print_json, progress_console, state


def _finish(result: dict[str, Any], json_output: bool, headline: str) -> None:
    if json_output:
        print_json(result)
        return
    from scheduler.cli.humanize import result_lines

    console.print(headline, highlight=False)
    details = {k: v for k, v in result.items() if k not in ("job_id", "state")}
    for line in result_lines(details):
        console.print(line, highlight=False, markup=False)


def metrics_line(headline: dict[str, Any]) -> str:
    """The evaluate job's headline figures in one rounded line (`workers.evaluate.summary`)."""
    from workers.evaluate.summary import fmt

    parts = [("recall", "recall"), ("exact match", "exact_match"), ("generalisation gain", "nll_gain"),
             ("forgetting max", "forgetting_max"), ("mean", "forgetting_mean"),
             ("general retention", "general_retention"), ("KL drift", "kl_drift"), ("suppression", "suppression")]
    return "  ".join(f"{label} {fmt(headline.get(key), 3 if key == 'kl_drift' else 2)}" for label, key in parts)


def _common(json_output: bool, wait: bool, device: str, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    from scheduler.jobwait import run_job

    settings = state.settings
    state.sessions()
    return run_job(settings, kind, params, progress_console(json_output), device=device, wait=wait)


# Spelled out rather than read from workers.learning.continual (which imports torch: seconds on every
# CLI call); a unit test checks it names every recipe.
RECIPE_HELP = ("Continual recipe: default | naive | replay | ewc_lora | ewc_delta_w | l2_delta_w | kl | "
               "self_replay | nested | nested_surprise; default: CONTINUUM_RECIPE.")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")
_WAIT = typer.Option(True, "--wait/--no-wait", help="Follow the job until it ends (starts an embedded worker if needed).")
_DEVICE = typer.Option("auto", "--device", help="auto (best live worker: cuda > mps > cpu), cuda, mps or cpu.")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        dataset: int = typer.Option(..., "--dataset", help="Dataset id to learn (see `continuum datasets list`)."),
        parent: Optional[int] = typer.Option(None, "--parent", help="Adapter id to continue; default: production."),
        fresh: bool = typer.Option(False, "--fresh", help="Start a new adapter instead of continuing one."),
        recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs for this cycle."),
        params: Optional[str] = typer.Option(None, "--params", help='Extra JSON job params, e.g. {"train": {"learning_rate": 1e-3}}.'),
        device: str = _DEVICE, wait: bool = _WAIT, json_output: bool = _JSON,
    ) -> None:
        """Train one continual cycle on a dataset and publish a candidate adapter."""
        job: dict[str, Any] = {"dataset_id": dataset, **(json.loads(params) if params else {})}
        if parent is not None:
            job["parent_adapter_id"] = parent
        if fresh:
            job["fresh"] = True
        if recipe:
            job["recipe"] = recipe
        if epochs is not None:
            job.setdefault("train", {})["epochs"] = epochs
        result = _common(json_output, wait, device, "train", job)
        _finish(result, json_output, f"adapter [bold]v{result.get('version', '?')}[/bold] (id {result.get('adapter_id', '?')})"
                if wait else f"train job {result['job_id']} queued")

    @app.command("fisher")
    def fisher(
        adapter: Optional[int] = typer.Option(None, "--adapter", help="Adapter id; default: production."),
        force: bool = typer.Option(False, "--force", help="Compute even if the recipe uses no Fisher."),
        device: str = _DEVICE, wait: bool = _WAIT, json_output: bool = _JSON,
    ) -> None:
        """Compute the diagonal empirical Fisher of an adapter (folded online into its parent's)."""
        job: dict[str, Any] = {"force": force}
        if adapter is not None:
            job["adapter_id"] = adapter
        result = _common(json_output, wait, device, "fisher", job)
        _finish(result, json_output, f"fisher: {result.get('status', result['state'])} {result.get('reason', '')}")

    @app.command("evaluate")
    def evaluate(
        adapter: int = typer.Option(..., "--adapter", help="Candidate adapter id."),
        dataset: Optional[int] = typer.Option(None, "--dataset", help="New dataset; default: the one it trained on."),
        exact_match: Optional[bool] = typer.Option(
            None, "--exact-match/--no-exact-match", help="Also score exact match of whole answers (short-answer data)."
        ),
        device: str = _DEVICE, wait: bool = _WAIT, json_output: bool = _JSON,
    ) -> None:
        """Score an adapter: recall of what it taught, generalisation on holdout, forgetting since first taught,
        general retention against the base model, suppression of thumbs-down answers."""
        job: dict[str, Any] = {"adapter_id": adapter}
        if dataset is not None:
            job["dataset_id"] = dataset
        if exact_match is not None:
            job["exact_match"] = exact_match
        result = _common(json_output, wait, device, "evaluate", job)
        if json_output or not wait or "metrics" not in result:
            _finish(result, json_output, f"evaluate job {result['job_id']} queued" if not wait else
                    f"evaluation {result.get('evaluation_id', '?')} of adapter {adapter}: {result.get('state')}")
            return
        console.print(f"evaluation {result.get('evaluation_id', '?')} of adapter {adapter}", highlight=False)
        console.print(metrics_line(result["metrics"]), highlight=False)

    @app.command("promote")
    def promote(
        evaluation: Optional[int] = typer.Option(None, "--evaluation", help="Evaluation id (the gate reads it)."),
        adapter: Optional[int] = typer.Option(None, "--adapter", help="Adapter id (default: the evaluation's)."),
        force: bool = typer.Option(False, "--force", help="Skip the gate (recorded in the alias history)."),
        wait: bool = _WAIT, json_output: bool = _JSON,
    ) -> None:
        """Move `production` to a candidate if its evaluation passes the gate."""
        job: dict[str, Any] = {"force": force}
        if evaluation is not None:
            job["evaluation_id"] = evaluation
        if adapter is not None:
            job["adapter_id"] = adapter
        result = _common(json_output, wait, "auto", "promote", job)
        if json_output:
            print_json(result)
            return
        console.print(f"promote: [bold]{result.get('status', result['state'])}[/bold]")
        # One gate reason per line, passed and failed alike.
        reasons = str(result.get("reason") or "")
        for prefix in ("gate refused: ", "gate passed: "):
            reasons = reasons.removeprefix(prefix)
        for reason in reasons.split("; "):
            if reason:
                console.print(f"  {reason}", highlight=False)

    @app.command("rollback")
    def rollback(
        to: Optional[int] = typer.Option(None, "--to", help="Adapter id; default: the previous production adapter."),
        alias: str = typer.Option("production", "--alias", help="Alias to move back."),
        json_output: bool = _JSON,
    ) -> None:
        """Move the alias back to its previous adapter (compare-and-set, recorded in its history)."""
        from workers.promote.aliases import rollback as move_back

        moved = move_back(state.sessions(), alias, to, reason="rollback from the CLI")
        result = {"succeeded": moved.succeeded, "alias": alias, "from": moved.from_adapter_id,
                  "to": moved.to_adapter_id, "reason": moved.reason}
        if json_output:
            print_json(result)
        else:
            console.print(f"{alias}: {moved.from_adapter_id} → {moved.to_adapter_id} "
                          f"({'ok' if moved.succeeded else 'refused: ' + str(moved.reason)})")
        if not moved.succeeded:
            raise typer.Exit(1)
