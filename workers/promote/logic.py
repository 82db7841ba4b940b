"""The `promote` job: evaluation → gate → compare-and-set the alias → optional hot-swap.

Effectively-once: a retried job that already moved the alias (its job id is in the history as a
successful move) does not move it again; it only repeats the idempotent hot-swap.

Fenced: the alias move, its history row and the adapter/evaluation status are ONE transaction that
also checks this attempt's lease (`ctx.hold`), so a stale attempt moves nothing. The job is marked done
after the hot-swap (whose calls are in the result), by the runner, under the same lease.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Adapter, AliasHistory, Evaluation
from common.errors import NotFound, ValidationError
from workers.context import JobContext
from workers.params import parse_params
from workers.promote.aliases import move_alias, read_alias, record_attempt
from workers.promote.gate import GateThresholds, decide
from workers.promote.hotswap import hot_swap


class PromoteJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evaluation_id: int | None = Field(None, description="Evaluation of the candidate (gate input).")
    adapter_id: int | None = Field(None, description="Candidate; default: the evaluation's adapter.")
    alias: str = Field("production", description="Alias to move.")
    min_recall: float | None = Field(None, description="Override settings.gate_min_recall.")
    recall_exact_match: bool | None = Field(None, description="Override settings.gate_recall_exact_match.")
    min_generalisation_gain: float | None = Field(None, description="Override settings.gate_min_generalisation_gain.")
    max_forgetting: float | None = Field(None, description="Override settings.gate_max_forgetting.")
    min_general_retention: float | None = Field(None, description="Override settings.gate_min_general_retention.")
    min_suppression: float | None = Field(None, description="Override settings.gate_min_suppression.")
    force: bool = Field(False, description="Skip the gate (operator decision; still recorded).")


def _parse(params: dict[str, Any]) -> PromoteJobParams:
    parsed = parse_params(params, PromoteJobParams)
    if parsed.evaluation_id is None and parsed.adapter_id is None:
        raise ValidationError("promote needs evaluation_id or adapter_id")
    return parsed


def run(ctx: JobContext) -> dict[str, Any]:
    params = _parse(ctx.params)
    with session_scope(ctx.sessions) as session:
        evaluation = session.get(Evaluation, params.evaluation_id) if params.evaluation_id is not None else None
        if params.evaluation_id is not None and evaluation is None:
            raise NotFound(f"no evaluation {params.evaluation_id}")
        candidate_id = params.adapter_id or evaluation.adapter_id
        candidate = session.get(Adapter, candidate_id)
        if candidate is None:
            raise NotFound(f"no adapter {candidate_id}: list them with `continuum adapters list`")
        already = session.scalar(
            select(AliasHistory).where(AliasHistory.job_id == ctx.job_id, AliasHistory.succeeded.is_(True))
        )
        metrics = dict(evaluation.metrics) if evaluation is not None else {}
    alias = params.alias
    if already is None:
        thresholds = GateThresholds.from_settings(
            ctx.settings,
            min_recall=params.min_recall,
            recall_exact_match=params.recall_exact_match,
            min_generalisation_gain=params.min_generalisation_gain,
            max_forgetting=params.max_forgetting,
            min_general_retention=params.min_general_retention,
            min_suppression=params.min_suppression,
        )
        decision = decide(metrics, thresholds)
        if evaluation is None and not params.force:
            decision = decision.__class__(False, ["no evaluation given: evaluate first or pass force"])
        if not (decision.passed or params.force):
            state = read_alias(ctx.sessions, alias)
            with session_scope(ctx.sessions) as session:
                ctx.hold(session)
                record_attempt(session, alias, "promote", state.adapter_id, candidate.id, False,
                               f"gate refused: {decision.summary}", ctx.job_id)
                session.get(Adapter, candidate.id).status = "rejected"
                if evaluation is not None:
                    session.get(Evaluation, evaluation.id).passed_gate = False
            return {"status": "rejected", "adapter_id": candidate.id, "reason": decision.summary}
        state = read_alias(ctx.sessions, alias)
        if state.adapter_id == candidate.id:
            return {"status": "unchanged", "adapter_id": candidate.id, "reason": "already the alias target"}
        def promoted(session) -> None:  # noqa: ANN001 - runs inside the move's transaction
            ctx.hold(session)
            session.get(Adapter, candidate.id).status = "promoted"
            if evaluation is not None:
                session.get(Evaluation, evaluation.id).passed_gate = True

        moved = move_alias(ctx.sessions, alias, candidate.id, state.revision, action="promote",
                           reason=("forced; " if params.force else "gate passed: ") + decision.summary,
                           job_id=ctx.job_id, on_moved=promoted)
        if not moved.succeeded:
            return {"status": "lost_race", "adapter_id": candidate.id, "reason": moved.reason}
        previous_id = moved.from_adapter_id
        reason = moved.reason
    else:
        previous_id = already.from_adapter_id
        reason = already.reason
    calls: list[str] = []
    if ctx.settings.hot_swap_url:
        with session_scope(ctx.sessions) as session:
            new = session.get(Adapter, candidate.id)
            old = session.get(Adapter, previous_id) if previous_id is not None else None
        calls = hot_swap(ctx.settings.hot_swap_url, new, old, ctx.settings.hot_swap_timeout_seconds)
    return {"status": "promoted", "adapter_id": candidate.id, "previous_adapter_id": previous_id,
            "alias": alias, "hot_swap": calls, "reason": reason}
