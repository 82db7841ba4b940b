"""What the report shows, read from the database into plain dataclasses (no plotting here).

Metrics shape the evaluate job writes into `Evaluation.metrics` (every key optional; read defensively
so an older or partial row still renders; see `workers.learning.evaluation` for the vocabulary):

    accuracy_matrix:     {"versions", "datasets", "matrix"}: token accuracy on each dataset's probe
                         rows (taught, never replayed); the last row is this version's
    recall:              {"token_accuracy", ...} on the rows this cycle taught
    forgetting_max/mean: worst / mean (first taught − now) / first taught over earlier datasets
    backward_transfer:   mean (now − first taught) over earlier datasets (negative = forgetting)
    general_retention:   {"still_right", "agreement", "kl_drift", ...} against the base model
    train_loss_curve:    [float, ...]  (also read from Adapter.metadata_["train"]["loss_curve"])

Older rows (`accuracy_by_dataset`, `plasticity`, a flat `forgetting`, `kl_drift`) still read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db.models import Adapter, AliasHistory, DocumentComparison, Evaluation, Job


@dataclass(frozen=True)
class VersionPoint:
    """One adapter version and its (latest) evaluation."""

    adapter_id: int
    lineage: str
    version: int
    created_at: datetime
    status: str
    dataset_ids: tuple[int, ...]
    accuracy_by_dataset: dict[int, float] = field(default_factory=dict)
    recall: float | None = None
    forgetting_max: float | None = None
    forgetting_mean: float | None = None
    general_retention: float | None = None
    backward_transfer: float | None = None
    kl_drift: float | None = None
    passed_gate: bool | None = None
    loss_curve: tuple[float, ...] = ()
    # Nested recipe: (frequency, updates, mean update norm) per tier, fastest first; () otherwise.
    tiers: tuple[tuple[int, int, float], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.lineage}@v{self.version}"


@dataclass(frozen=True)
class AliasEvent:
    """One attempt to move the alias (successful or refused)."""

    at: datetime
    action: str
    from_label: str | None
    to_label: str | None
    to_adapter_id: int | None
    succeeded: bool
    reason: str | None


@dataclass(frozen=True)
class ProductionSpan:
    """An interval during which one version held the alias; `end` None = still holds it."""

    adapter_id: int
    label: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class OnlinePoint:
    """One online job's figures (`workers/online/session.py`): where the lineage stood after it."""

    lineage: str
    at: datetime
    turns: int  # the turn clock: turns learnt so far
    facts: int
    anchor_perplexity: float | None
    kl_to_base: float | None
    perplexity_drift: float | None
    recent_loss: float | None
    loss_improvement: float | None
    adaptation_speed: float | None
    anchor_regression: float | None
    forgetting_rate: float | None  # anchor regression per 100 turns
    published_version: int | None  # the version this job published, if any
    restarted: str | None = None  # why the state restarted from production in this job


@dataclass(frozen=True)
class StrategyFigures:
    """One strategy's line of a `continuum documents compare` run (`workers/documents/compare.py`)."""

    strategy: str
    changes_weights: bool
    qa_accuracy: float | None
    general_retention: float | None
    forgetting_ratio: float | None
    learn_seconds: float | None
    answer_seconds: float | None
    artifact_bytes: int | None


@dataclass(frozen=True)
class ComparisonPoint:
    """One comparison run: the documents, the base model, and every strategy's figures."""

    at: datetime
    base_model: str
    documents: tuple[str, ...]
    questions: int
    strategies: tuple[StrategyFigures, ...]


def comparison_points(session: Session, last: int = 5) -> list[ComparisonPoint]:
    """The last `last` comparisons, oldest first."""
    rows = list(session.scalars(select(DocumentComparison).order_by(DocumentComparison.id.desc()).limit(last)))
    points = []
    for row in reversed(rows):
        figures = tuple(
            StrategyFigures(str(r.get("strategy", "?")), bool(r.get("changes_weights", True)), _number(r.get("qa_accuracy")),
                            _number(r.get("general_retention")), _number(r.get("forgetting_ratio")),
                            _number(r.get("learn_seconds")), _number(r.get("answer_seconds_per_question")),
                            r.get("artifact_bytes"))
            for r in row.results or [] if isinstance(r, dict))
        points.append(ComparisonPoint(as_utc(row.created_at), row.base_model, tuple(row.documents or []),
                                      row.questions, figures))
    return points


def online_points(session: Session, lineages: list[str] | None = None) -> dict[str, list[OnlinePoint]]:
    """The succeeded online jobs that applied turns, per lineage, oldest first."""
    found: dict[str, list[OnlinePoint]] = {}
    jobs = session.scalars(select(Job).where(Job.kind == "online", Job.state == "succeeded")
                           .order_by(Job.finished_at, Job.created_at))
    for job in jobs:
        result = job.result if isinstance(job.result, dict) else {}
        if result.get("status") != "applied" or (lineages and result.get("lineage") not in lineages):
            continue
        metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
        part = lambda name: metrics.get(name) if isinstance(metrics.get(name), dict) else {}  # noqa: E731
        stability, plasticity, forgetting = part("stability"), part("plasticity"), part("forgetting")
        published = result.get("published") if isinstance(result.get("published"), dict) else {}
        found.setdefault(str(result.get("lineage")), []).append(OnlinePoint(
            lineage=str(result.get("lineage")), at=as_utc(job.finished_at or job.created_at),
            turns=int(result.get("turn_clock") or 0), facts=int(result.get("facts") or 0),
            anchor_perplexity=_number(stability.get("anchor_perplexity")),
            kl_to_base=_number(stability.get("kl_to_base")),
            perplexity_drift=_number(stability.get("perplexity_drift")),
            recent_loss=_number(plasticity.get("recent_loss")),
            loss_improvement=_number(plasticity.get("loss_improvement")),
            adaptation_speed=_number(plasticity.get("adaptation_speed")),
            anchor_regression=_number(forgetting.get("anchor_regression")),
            forgetting_rate=_number(forgetting.get("forgetting_rate_per_100_turns")),
            published_version=published.get("version"), restarted=result.get("restarted"),
        ))
    return found


@dataclass
class ReportData:
    """Everything the report renders."""

    generated_at: datetime
    alias: str
    lineages: dict[str, list[VersionPoint]]
    dataset_labels: dict[int, str]
    alias_events: list[AliasEvent]
    spans: list[ProductionSpan]
    online: dict[str, list[OnlinePoint]] = field(default_factory=dict)  # lineage → online jobs, oldest first
    comparisons: list[ComparisonPoint] = field(default_factory=list)  # `documents compare` runs, oldest first

    @property
    def versions(self) -> list[VersionPoint]:
        return [point for points in self.lineages.values() for point in points]

    def holder(self) -> str | None:
        """The version holding the alias now."""
        current = [span for span in self.spans if span.end is None]
        return current[-1].label if current else None


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp we write is UTC.
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dataset_key(key: Any) -> int | None:
    # JSON object keys are strings: "3" → 3.
    try:
        return int(key)
    except (TypeError, ValueError):
        return None


def accuracy_row(metrics: dict[str, Any], dataset_id: int | None) -> dict[int, float]:
    """This version's row of the accuracy matrix as {dataset_id: acc}: the last row of
    `accuracy_matrix`, else the older `accuracy_by_dataset` (a mapping or a list of rows)."""
    raw = metrics.get("accuracy_by_dataset")
    table = metrics.get("accuracy_matrix")
    pairs: list[tuple[Any, Any]] = []
    if isinstance(table, dict) and isinstance(table.get("matrix"), list) and table["matrix"]:
        last = table["matrix"][-1]
        if isinstance(last, list) and isinstance(table.get("datasets"), list):
            pairs = list(zip(table["datasets"], last))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = [(item.get("dataset_id"), item.get("accuracy")) for item in raw if isinstance(item, dict)]
    row = {}
    for key, value in pairs:
        dataset, accuracy = _dataset_key(key), _number(value)
        if dataset is not None and accuracy is not None:
            row[dataset] = accuracy
    # An old row's plasticity was the accuracy on its own dataset: fill the diagonal when it is all we have.
    plasticity = _number(metrics.get("plasticity"))
    if dataset_id is not None and dataset_id not in row and plasticity is not None:
        row[dataset_id] = plasticity
    return row


def forgetting_pair(metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """(max, mean) forgetting: the flat `forgetting_max`/`forgetting_mean` keys, else a {"max", "mean"}
    mapping, else an old flat `forgetting` float, which was the max (the mean is then unknown, never
    a copy of the max)."""
    raw = metrics.get("forgetting")
    if isinstance(raw, dict):
        return _number(raw.get("max")), _number(raw.get("mean"))
    worst, mean = _number(metrics.get("forgetting_max")), _number(metrics.get("forgetting_mean"))
    return (_number(raw) if worst is None else worst), mean


def loss_curve(adapter: Adapter, metrics: dict[str, Any]) -> tuple[float, ...]:
    train = (adapter.metadata_ or {}).get("train")
    raw = train.get("loss_curve") if isinstance(train, dict) else None
    if not isinstance(raw, list):
        raw = metrics.get("train_loss_curve")
    if not isinstance(raw, list):
        return ()
    values = [_number(value) for value in raw]
    return tuple(value for value in values if value is not None)


def _version_point(adapter: Adapter, evaluation: Evaluation | None) -> VersionPoint:
    from workers.evaluate.summary import summary

    metrics = evaluation.metrics if evaluation is not None and isinstance(evaluation.metrics, dict) else {}
    headline = summary(metrics)
    forgetting_max, forgetting_mean = forgetting_pair(metrics)
    dataset_ids = tuple(d for d in (_dataset_key(x) for x in adapter.dataset_ids or []) if d is not None)
    # The dataset this cycle taught: the evaluation's, else the newest the adapter trained on.
    own_dataset = evaluation.dataset_id if evaluation is not None else None
    if own_dataset is None and dataset_ids:
        own_dataset = dataset_ids[-1]
    return VersionPoint(
        adapter_id=adapter.id,
        lineage=adapter.name,
        version=adapter.version,
        created_at=as_utc(adapter.created_at),
        status=adapter.status,
        dataset_ids=dataset_ids,
        accuracy_by_dataset=accuracy_row(metrics, own_dataset),
        recall=_number(headline["recall"]),
        forgetting_max=forgetting_max,
        forgetting_mean=forgetting_mean,
        general_retention=_number(headline["general_retention"]),
        backward_transfer=_number(headline["backward_transfer"]),
        kl_drift=_number(headline["kl_drift"]),
        passed_gate=evaluation.passed_gate if evaluation is not None else None,
        loss_curve=loss_curve(adapter, metrics),
        tiers=tier_stats(adapter),
    )


def tier_stats(adapter: Adapter) -> tuple[tuple[int, int, float], ...]:
    """The nested tiers' statistics from the adapter's training metrics (`train.tiers`)."""
    train = (adapter.metadata_ or {}).get("train")
    raw = train.get("tiers") if isinstance(train, dict) else None
    if not isinstance(raw, list):
        return ()
    stats = []
    for tier in raw:
        if isinstance(tier, dict) and {"frequency", "updates", "mean_update_norm"} <= set(tier):
            stats.append((int(tier["frequency"]), int(tier["updates"]), float(tier["mean_update_norm"])))
    return tuple(stats)


def production_spans(events: list[AliasEvent]) -> list[ProductionSpan]:
    """Intervals of holding the alias, from the successful moves in time order."""
    spans: list[ProductionSpan] = []
    for event in events:
        if not event.succeeded:
            continue
        if spans and spans[-1].end is None:
            last = spans[-1]
            spans[-1] = ProductionSpan(last.adapter_id, last.label, last.start, event.at)
        if event.to_adapter_id is not None:
            spans.append(ProductionSpan(event.to_adapter_id, event.to_label or "?", event.at, None))
    return spans


def load_report_data(session: Session, alias: str = "production", lineages: list[str] | None = None) -> ReportData:
    """Read adapters, their latest evaluations, datasets and the alias history."""
    adapter_query = select(Adapter).order_by(Adapter.name, Adapter.version)
    if lineages:
        adapter_query = adapter_query.where(Adapter.name.in_(lineages))
    adapters = list(session.scalars(adapter_query))
    latest: dict[int, Evaluation] = {}
    for evaluation in session.scalars(select(Evaluation).order_by(Evaluation.created_at, Evaluation.id)):
        latest[evaluation.adapter_id] = evaluation  # later rows win: a re-evaluation replaces the first

    by_lineage: dict[str, list[VersionPoint]] = {}
    for adapter in adapters:
        by_lineage.setdefault(adapter.name, []).append(_version_point(adapter, latest.get(adapter.id)))

    points = [point for group in by_lineage.values() for point in group]
    dataset_ids = sorted({d for point in points for d in (*point.accuracy_by_dataset, *point.dataset_ids)})
    # Datasets are exported one per cycle, so id order is round order.
    dataset_labels = {d: f"round {i + 1}\nds {d}" for i, d in enumerate(dataset_ids)}

    labels = {a.id: f"{a.name}@v{a.version}" for a in session.scalars(select(Adapter))}
    history = session.scalars(
        select(AliasHistory).where(AliasHistory.alias == alias).order_by(AliasHistory.created_at, AliasHistory.id)
    )
    events = [
        AliasEvent(
            at=as_utc(row.created_at),
            action=row.action,
            from_label=labels.get(row.from_adapter_id) if row.from_adapter_id is not None else None,
            to_label=labels.get(row.to_adapter_id) if row.to_adapter_id is not None else None,
            to_adapter_id=row.to_adapter_id,
            succeeded=bool(row.succeeded),
            reason=row.reason,
        )
        for row in history
    ]
    now = datetime.now(timezone.utc)
    return ReportData(
        generated_at=now,
        alias=alias,
        lineages=by_lineage,
        dataset_labels=dataset_labels,
        alias_events=events,
        spans=production_spans(events),
        online=online_points(session, lineages),
        comparisons=comparison_points(session),
    )
