"""Online learning's versions: the online adapter published as a version of its lineage, through the
same evaluate → promote gate as a batch cycle, so online learning can never move `production` to an
adapter the gate refuses.

**When.** After `CONTINUUM_ONLINE_PUBLISH_EVERY` learnt turns since the last version, or once the
oldest unpublished update is `CONTINUUM_ONLINE_PUBLISH_SECONDS` old. Each online job checks at its end;
the sweep (beat, or the embedded worker) enqueues a check for an idle lineage, so the time rule holds
when turns stop coming.

**What.** The adapter as it is now (PEFT files, like a trained version, `metadata.online` saying how
many turns it holds), its parent the version the online state extends, and a dataset of the facts
learnt since that version (`kind = "online"`, the export's shard format, manifest last):
- `probe`: each fact as the questions the learner trained on (taught; the lineage's later versions
  are scored on these for forgetting). The online learner replays important facts, so their later
  scores include replay; a batch cycle's replay reads only `train` rows and does not draw them.
- `holdout`: each fact asked in a wording the learner never trains on (`rows.held_out_row`):
  generalisation against the parent.
Turns that state no fact (chat, questions) are learnt but not in the dataset: their target is the
model's own answer, which says nothing about whether anything was learnt.

The version, its dataset, the pipeline run that starts at `evaluate` and the job's end are one
transaction; the evaluate step is sent after it (the sweep sends it if that send is lost).

**After.** The state goes on learning from the version it published. At the next job, if the gate
refused that version (status `rejected`), or `production` moved to a version the state does not
extend (a batch cycle promoted, or an operator rolled back), the state restarts from `production`:
the weights learnt since the last accepted version are dropped, the fact memory is kept and its
replay teaches the important facts again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.db.models import Adapter, Dataset, OnlineTurn
from common.objectstore.artifacts import MANIFEST
from common.objectstore.keys import join
from workers.export.shard import SCHEMA_VERSION
from workers.online.rows import fact_rows, held_out_row

DATASET_KIND = "online"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class PublishClock:
    """What the online state holds beyond its anchor (the version it extends), kept in its checkpoint."""

    anchor_adapter_id: int | None = None
    anchor_turn_id: int = 0  # the last turn the anchor already holds
    unpublished_updates: int = 0
    unpublished_since: str | None = None  # ISO time of the first update after the anchor
    publishing_job: str | None = None  # the job that published last; its version is the anchor once registered
    before: dict[str, Any] | None = field(default=None, repr=False)  # the clock before that publication

    @classmethod
    def from_progress(cls, progress: dict[str, Any]) -> "PublishClock":
        raw = progress.get("publish")
        if raw is None:  # a state from before publishing: its anchor is the adapter it started from
            return cls(anchor_adapter_id=progress.get("start_adapter_id"), anchor_turn_id=0,
                       unpublished_updates=int(progress.get("updates", 0)))
        return cls(**raw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def learnt(self, updates: int, now: datetime) -> None:
        if updates and self.unpublished_updates == 0:
            self.unpublished_since = now.isoformat()
        self.unpublished_updates += updates

    def due(self, every: int, seconds: float, now: datetime) -> str | None:
        """Why a version is due now, or None."""
        if self.unpublished_updates <= 0:
            return None
        if every and self.unpublished_updates >= every:
            return f"{self.unpublished_updates} learnt turns since the last version (every {every})"
        if seconds and self.unpublished_since:
            age = (now - datetime.fromisoformat(self.unpublished_since)).total_seconds()
            if age >= seconds:
                return f"oldest unpublished update {age:.0f} s old (every {seconds:g} s)"
        return None

    def published(self, job_id: str, last_turn_id: int) -> None:
        """This job publishes the state: it becomes the anchor once its version is registered."""
        self.before = {k: v for k, v in self.as_dict().items() if k != "before"}
        self.publishing_job = job_id
        self.anchor_turn_id = last_turn_id
        self.unpublished_updates = 0
        self.unpublished_since = None

    def resolve(self, session: Session) -> None:
        """Settle a publication: its version is the anchor if it was registered, else undo it (the job
        died between its checkpoint and its transaction; those updates are unpublished again)."""
        if self.publishing_job is None:
            return
        adapter = session.scalars(select(Adapter).where(Adapter.job_id == self.publishing_job)).first()
        if adapter is not None:
            self.anchor_adapter_id = adapter.id
        elif self.before is not None:
            kept = self.unpublished_updates, self.unpublished_since
            for name, value in self.before.items():
                setattr(self, name, value)
            self.unpublished_updates += kept[0]
            self.unpublished_since = self.unpublished_since or kept[1]
        self.publishing_job = None
        self.before = None

    def restarted(self, anchor_adapter_id: int | None, last_turn_id: int) -> None:
        self.anchor_adapter_id = anchor_adapter_id
        self.anchor_turn_id = last_turn_id
        self.unpublished_updates = 0
        self.unpublished_since = None


def restart_reason(session: Session, production: Adapter | None, anchor_id: int | None) -> str | None:
    """Why the online state must restart from `production` (None: it may go on).

    `production` is the alias target when it belongs to this lineage. A version still being evaluated
    (status `candidate`) keeps the state going: its gate has not spoken yet.
    """
    anchor = session.get(Adapter, anchor_id) if anchor_id is not None else None
    if anchor is not None and anchor.status == "rejected":
        return f"the gate refused v{anchor.version}"
    if production is None or (anchor is not None and production.id == anchor.id):
        return None
    if anchor is None:
        return f"production is now v{production.version}"
    if anchor.status == "candidate":
        return None
    return f"production moved to v{production.version} (the online state extends v{anchor.version})"


def learnt_facts(session: Session, lineage: str, after_turn_id: int, up_to_turn_id: int,
                 pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The facts learnt from turns (after_turn_id, up_to_turn_id], newest wording of each, in order:
    turns already marked applied, then `pending` (this job's outcomes, not yet in the table)."""
    outcomes = [t.result or {} for t in session.scalars(
        select(OnlineTurn).where(OnlineTurn.lineage == lineage, OnlineTurn.id > after_turn_id,
                                 OnlineTurn.id <= up_to_turn_id, OnlineTurn.applied_at.is_not(None))
        .order_by(OnlineTurn.id))]
    facts: dict[str, dict[str, Any]] = {}
    for outcome in outcomes + pending:
        for fact in outcome.get("learnt_facts", []):
            facts.pop(fact["key"], None)
            facts[fact["key"]] = fact
    return list(facts.values())


def dataset_rows(facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dataset lines (the export's shard schema) for `facts`: taught wordings as `probe`, the
    never-trained wording as `holdout`."""
    created = _now().isoformat()
    lines = []
    for fact in facts:
        view = SimpleNamespace(**fact)
        for split, rows in (("probe", fact_rows(view)), ("holdout", [held_out_row(view)])):
            for row in rows:
                digest = hashlib.sha256(json.dumps([row["prompt"], row["response"]]).encode()).hexdigest()
                lines.append({"feedback_id": 0, "prompt": row["prompt"], "response": row["response"],
                              "messages": None, "feedback": "thumbs_up", "weight": 1.0, "unlikelihood": False,
                              "split": split, "content_hash": digest, "created_at": created,
                              "fact_key": fact["key"]})
    return lines


@dataclass
class Publication:
    """Files uploaded for one version, waiting for `register` in the job's final transaction."""

    lineage: str
    reason: str
    adapter_prefix: str
    dataset_prefix: str
    dataset_uid: str
    dataset_sha256: str
    counts: dict[str, int]
    metadata: dict[str, Any]
    parent_id: int | None = None  # the version the state extends (set by the job)


def upload(ctx: Any, lineage: str, model: Any, reason: str, facts: list[dict[str, Any]],
           metadata: dict[str, Any]) -> Publication:
    """Upload the adapter and the dataset (each manifest last) under this attempt's prefixes."""
    from workers.learning.lora import publish_adapter

    from workers.export.shard import publish_rows

    rows = dataset_rows(facts)
    uid = f"online-{ctx.job_id}"
    dataset_prefix = ctx.attempt_prefix(f"datasets/{uid}")
    adapter_prefix = ctx.attempt_prefix(f"adapters/{lineage}/{ctx.job_id}")
    sha256, counts = publish_rows(ctx.store, dataset_prefix, rows, DATASET_KIND, {
        "dataset_uid": uid, "job_id": ctx.job_id, "counts": {"facts": len(facts)},
        "policy": {"source": "online", "lineage": lineage}})
    counts = {k: counts[k] for k in ("train", "probe", "holdout")}
    with tempfile.TemporaryDirectory() as tmp:
        publish_adapter(ctx.store, adapter_prefix, model, {**metadata, "prefix": adapter_prefix}, workdir=tmp)
    return Publication(lineage, reason, adapter_prefix, dataset_prefix, uid, sha256, counts,
                       {**metadata, "prefix": adapter_prefix})


def register(ctx: Any, session: Session, publication: Publication, parent: Adapter | None) -> tuple[Adapter, str]:
    """Insert the dataset, the version and its pipeline run (starting at `evaluate`) in `session`'s
    transaction. Returns (adapter, pipeline run id). A version-number clash raises IntegrityError at
    flush: the caller retries its whole transaction."""
    from common.orchestration.pipeline import insert_pipeline_run

    dataset = Dataset(uid=publication.dataset_uid, kind=DATASET_KIND,
                      uri=f"{ctx.store.url.rstrip('/')}/{publication.dataset_prefix}",
                      manifest_key=join(publication.dataset_prefix, MANIFEST),
                      num_rows=sum(publication.counts.values()), num_train=publication.counts["train"],
                      num_holdout=publication.counts["holdout"], sha256=publication.dataset_sha256,
                      schema_version=SCHEMA_VERSION, policy={"source": "online", "lineage": publication.lineage},
                      job_id=ctx.job_id, state="ready")
    session.add(dataset)
    session.flush()
    version = (session.scalar(select(func.max(Adapter.version)).where(Adapter.name == publication.lineage)) or 0) + 1
    dataset_ids = (list(parent.dataset_ids) if parent is not None else []) + [dataset.id]
    metadata = {**publication.metadata, "dataset_ids": dataset_ids,
                "parent_id": parent.id if parent is not None else None,
                "parent_version": parent.version if parent is not None else None}
    adapter = Adapter(name=publication.lineage, version=version, parent_id=parent.id if parent is not None else None,
                      lineage=(list(parent.lineage) if parent is not None else []) + [version],
                      base_model=metadata["base_model"],
                      uri=f"{ctx.store.url.rstrip('/')}/{publication.adapter_prefix}", status="candidate",
                      dataset_ids=dataset_ids, fisher_id=None, metadata_=metadata, job_id=ctx.job_id)
    session.add(adapter)
    session.flush()
    run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"continuum:online:{ctx.job_id}"))  # a retry finds the same run
    run = insert_pipeline_run(session, run_id, f"online:{ctx.job_id}", {
        "source": "online", "lineage": publication.lineage,
        "steps": {"evaluate": {"adapter_id": adapter.id, "dataset_id": dataset.id}},
    }, first_step="evaluate")
    return adapter, run.id
