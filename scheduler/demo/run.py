"""Run the demo: synthetic rounds, full pipeline cycles through a real worker process.

The tiny built-in model by default (a few minutes); `--model NAME` runs the same rounds on a real
registered model (`continuum model add`), whose cycles take minutes each on a CPU.

For every round: import that round's feedback, run export → fisher → train → evaluate → promote as a
pipeline through the embedded broker and a worker subprocess (the production code path), and — unless
turned off — train the *naive* recipe on the same data in a separate lineage (`naive`) through the
same worker, so the table can show what plain continued fine-tuning would have forgotten.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from common.settings import Mode, Settings, load_settings
from scheduler.demo.table import CycleRow
from workers.evaluate.summary import summary as headline_of


@dataclass
class DemoOptions:
    rounds: int = 3
    facts_per_round: int = 32
    epochs: int = 0  # 0: the cycle default
    naive: bool = True
    seed: int = 7
    timeout_per_step: float = 1800
    model_path: str | None = None  # a real model's local folder; None: the built-in tiny model


def real_model_path(base: Settings, model: str) -> str:
    """The local folder of `model` (a name registered in the user's home, or a model folder).

    Resolved in the user's own home, so the demo's wiped home needs no second copy of the model.
    Raises `PermanentError` naming the fix when the model is neither.
    """
    from common.objectstore import open_store
    from workers.base_model import resolve_base_model

    from common.errors import PermanentError

    settings = base.model_copy(update={"base_model": model})
    try:
        return resolve_base_model(settings, open_store(settings))
    except PermanentError as exc:  # the check names the setting; here the user typed --model
        raise PermanentError(str(exc).replace("CONTINUUM_BASE_MODEL=", "--model ", 1)) from None


def demo_settings(base: Settings, model_path: str | None = None) -> Settings:
    """The demo keeps its state in `<home>/demo`, wiped at start, so running it twice is safe."""
    home = (base.home / "demo").resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    os.environ["CONTINUUM_HOME"] = str(home)  # the worker subprocess reads its settings from the environment
    if model_path is None:
        os.environ.pop("CONTINUUM_BASE_MODEL", None)
        return load_settings(mode=Mode.embedded, home=home)
    os.environ["CONTINUUM_BASE_MODEL"] = model_path
    return load_settings(mode=Mode.embedded, home=home, base_model=model_path)


def _evaluation(settings: Settings, evaluation_id: int) -> dict[str, Any]:
    from common.db.engine import session_scope
    from common.db.models import Evaluation
    from workers.resources import resources_for

    with session_scope(resources_for(settings).sessions) as session:
        return dict(session.get(Evaluation, evaluation_id).metrics)


def _retention(metrics: dict[str, Any], dataset_round: dict[str, int]) -> dict[int, float | None]:
    """Earlier round → its token accuracy now on its probe rows (the evaluation's `retention`)."""
    return {dataset_round[k]: v.get("now", v.get("token_accuracy"))
            for k, v in (metrics.get("retention") or {}).items() if k in dataset_round}


def run_demo(base: Settings, options: DemoOptions, console: Console) -> tuple[list[CycleRow], Settings]:
    from common.db.migrate import upgrade
    from common.feedback.importer import import_feedback_file
    from common.objectstore import open_store
    from scheduler.demo.feedback_stream import write_rounds
    from scheduler.embedded_worker import worker_running
    from scheduler.jobwait import follow_pipeline, run_job
    from scheduler.pipeline import start_pipeline
    from workers.base_model import resolve_base_model
    from workers.celery_app import app_for
    from workers.resources import resources_for

    settings = demo_settings(base, options.model_path)
    upgrade(settings.resolved_database_url)
    sessions = resources_for(settings).sessions
    if options.model_path is None:
        with console.status("building the tiny model (seeded, stored once for every worker)"):
            resolve_base_model(settings, open_store(settings))
    # A real model gets chat-form facts with one-sentence answers; the tiny model's tokenizer is
    # built for the short-answer facts.
    files = write_rounds(settings.home / "feedback", options.rounds, options.facts_per_round, options.seed,
                         sentences=options.model_path is not None)
    train_overrides = {"train": {"epochs": options.epochs}} if options.epochs else {}
    rows: list[CycleRow] = []
    dataset_round: dict[str, int] = {}
    naive_parent: int | None = None
    with worker_running(settings, queues=("io", "cpu")):
        for number, path in enumerate(files, start=1):
            started = time.monotonic()
            summary = import_feedback_file(sessions, settings, path)
            console.rule(f"round {number}: {summary.inserted} new thumbs-up rows (synthetic facts)")
            # One round = one cycle, however small: `--facts` may be below the scheduled pipeline's minimum.
            step_params = {"export": {"min_rows": 1}, "train": train_overrides}
            run, _ = start_pipeline(settings, app_for(settings), params={"steps": step_params})
            status = follow_pipeline(settings, run.id, console, options.timeout_per_step * 5)
            steps = status["steps"]
            if status["state"] != "succeeded":
                raise RuntimeError(f"pipeline run {run.id} ended {status['state']}: {status['error']}")
            dataset_id = steps["export"]["result"]["dataset_id"]
            dataset_round[str(dataset_id)] = number
            metrics = _evaluation(settings, steps["evaluate"]["result"]["evaluation_id"])
            promote = steps["promote"]["result"]
            headline = headline_of(metrics)
            row = CycleRow(
                round=number,
                dataset_id=dataset_id,
                version=f"v{steps['train']['result']['version']}",
                recall=headline["recall"],
                exact_match=headline["exact_match"],
                forgetting=headline["forgetting_max"],
                general_retention=headline["general_retention"],
                retention=_retention(metrics, dataset_round),
                promoted="yes" if promote.get("status") == "promoted" else str(promote.get("status")),
            )
            if options.naive:
                params: dict[str, Any] = {"dataset_id": dataset_id, "recipe": "naive", "adapter_name": "naive",
                                          **train_overrides}
                params.update({"parent_adapter_id": naive_parent} if naive_parent else {"fresh": True})
                trained = run_job(settings, "train", params, console, timeout=options.timeout_per_step)
                naive_parent = trained["adapter_id"]
                # General retention is the default lineage's column: the naive one skips its cost.
                evaluated = run_job(settings, "evaluate", {"adapter_id": naive_parent, "exact_match": False,
                                                           "general_retention": False}, console,
                                    timeout=options.timeout_per_step)
                naive = _evaluation(settings, evaluated["evaluation_id"])
                row.naive_recall = headline_of(naive)["recall"]
                row.naive_forgetting = headline_of(naive)["forgetting_max"]
                row.naive_retention = _retention(naive, dataset_round)
            rows.append(row)
            recall = "–" if row.recall is None else f"{row.recall:.2f}"
            console.print(f"round {number} done in {time.monotonic() - started:.0f}s "
                          f"(recall {recall}, promoted: {row.promoted})")
    return rows, settings
