"""Database lookups the ML jobs share: which adapter a cycle continues, which datasets came before.

The parent of a new cycle is what serves users: the adapter the `production` alias points at (when it
belongs to the lineage); before the first promotion, the newest adapter of the lineage; before any
training, none (a fresh adapter).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db.models import Adapter, Alias, AliasHistory, Dataset, Evaluation, FisherArtifact
from common.errors import NotFound

PRODUCTION = "production"


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist: list them with `continuum datasets list`")
    return dataset


def get_adapter(session: Session, adapter_id: int) -> Adapter:
    adapter = session.get(Adapter, adapter_id)
    if adapter is None:
        raise NotFound(f"adapter {adapter_id} does not exist: list them with `continuum adapters list`")
    return adapter


def alias_target(session: Session, alias: str = PRODUCTION) -> Adapter | None:
    row = session.get(Alias, alias)
    return session.get(Adapter, row.adapter_id) if row is not None and row.adapter_id is not None else None


def current_parent(session: Session, adapter_name: str) -> Adapter | None:
    """The adapter the next cycle continues (see the module docstring)."""
    promoted = alias_target(session, PRODUCTION)
    if promoted is not None and promoted.name == adapter_name:
        return promoted
    return session.scalars(
        select(Adapter).where(Adapter.name == adapter_name).order_by(Adapter.version.desc()).limit(1)
    ).first()


def taught_dataset_ids(session: Session, adapter: Adapter | None) -> list[int]:
    """Every dataset the adapter's lineage was trained on, oldest first."""
    ids: list[int] = []
    while adapter is not None:
        ids = [d for d in adapter.dataset_ids if d not in ids] + ids
        adapter = session.get(Adapter, adapter.parent_id) if adapter.parent_id else None
    return ids


def rolled_back_versions(session: Session, adapter_name: str, alias: str = PRODUCTION) -> list[Adapter]:
    """Adapters of the lineage that a successful `continuum rollback` moved `alias` away from, oldest first."""
    ids = session.scalars(
        select(AliasHistory.from_adapter_id)
        .where(AliasHistory.alias == alias, AliasHistory.action == "rollback", AliasHistory.succeeded.is_(True),
               AliasHistory.from_adapter_id.is_not(None))
        .order_by(AliasHistory.id)
    ).all()
    found: list[Adapter] = []
    for adapter_id in dict.fromkeys(ids):  # each once, in rollback order
        adapter = session.get(Adapter, adapter_id)
        if adapter is not None and adapter.name == adapter_name:
            found.append(adapter)
    return found


def lost_to_rollback(session: Session, parent: Adapter | None,
                     alias: str = PRODUCTION) -> tuple[list[int], list[Adapter]]:
    """Datasets a cycle from `parent` would silently lose to a rollback, and the versions that had them.

    A dataset is lost when a rolled-back version (see `rolled_back_versions`) was taught it and
    `parent`'s own ancestry was not: rolling back from v3 to v2 leaves v3's dataset behind. Once a
    later cycle re-teaches it (its adapter row lists the dataset), it is in the ancestry again and no
    longer lost. A fresh adapter (no parent) loses nothing: it starts over by request.
    """
    if parent is None:
        return [], []
    kept = set(taught_dataset_ids(session, parent))
    lost: list[int] = []
    versions: list[Adapter] = []
    for version in rolled_back_versions(session, parent.name, alias):
        missing = [d for d in taught_dataset_ids(session, version) if d not in kept and d not in lost]
        if missing:
            lost.extend(missing)
            versions.append(version)
    return sorted(lost), versions


def datasets_by_id(session: Session, ids: list[int]) -> list[Dataset]:
    if not ids:
        return []
    found = {d.id: d for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def latest_fisher_for(session: Session, adapter: Adapter | None) -> FisherArtifact | None:
    if adapter is None:
        return None
    return session.scalars(
        select(FisherArtifact).where(FisherArtifact.adapter_id == adapter.id).order_by(FisherArtifact.id.desc()).limit(1)
    ).first()


def evaluation_of(session: Session, adapter_id: int) -> Evaluation | None:
    return session.scalars(
        select(Evaluation).where(Evaluation.adapter_id == adapter_id).order_by(Evaluation.id.desc()).limit(1)
    ).first()


def adapter_prefix(adapter: Adapter) -> str:
    """The object-store prefix of a published adapter (its uri is `<store url>/<prefix>`)."""
    return adapter.metadata_["prefix"]
