"""Enqueue-time checks: a job whose parameters name a dataset, adapter, evaluation or recipe that does
not exist is refused before any ledger row or message is written (not found by the worker after
seconds of start-up, leaving a failed job behind).

Only what the database or a name list can answer without torch is checked here; the job re-validates
everything when it runs (the database may change in between).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Adapter, Dataset, Evaluation
from common.errors import NotFound, ValidationError
from common.recipes import recipe_problem

# kind → (parameter, table, what to call it, where to list them, required)
_REFERENCES: dict[str, tuple[tuple[str, Any, str, str, bool], ...]] = {
    "train": (("dataset_id", Dataset, "dataset", "continuum datasets list", True),
              ("parent_adapter_id", Adapter, "adapter", "continuum adapters list", False)),
    "fisher": (("adapter_id", Adapter, "adapter", "continuum adapters list", False),),
    "evaluate": (("adapter_id", Adapter, "adapter", "continuum adapters list", True),
                 ("dataset_id", Dataset, "dataset", "continuum datasets list", False)),
    "promote": (("evaluation_id", Evaluation, "evaluation", "continuum adapters list", False),
                ("adapter_id", Adapter, "adapter", "continuum adapters list", False)),
}


def check_job_params(sessions: sessionmaker[Session], kind: str, params: dict[str, Any]) -> None:
    """Raise NotFound / ValidationError (one line, naming the fix) for parameters that cannot work."""
    if kind == "train" and params.get("recipe") is not None:
        if problem := recipe_problem(str(params["recipe"])):
            raise ValidationError(f"train: {problem}")
    references = _REFERENCES.get(kind, ())
    if not references:
        return
    with session_scope(sessions) as session:
        for name, table, noun, list_command, required in references:
            value = params.get(name)
            if value is None:
                if required:
                    raise ValidationError(f"{kind}: `{name}` is required (see `{list_command}`)")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"{kind}: `{name}` must be an integer id, got {value!r}")
            row = session.get(table, value)
            if row is None:
                raise NotFound(f"{noun} {value} does not exist: list them with `{list_command}`")
            if table is Dataset and row.state != "ready":
                raise ValidationError(f"dataset {value} is still being exported ({row.state}): wait for its "
                                      "export job to finish")
