"""The export job's logic: claim unexported feedback as one batch, publish a dataset shard, record it.

Three steps, so that no database lock is held while the shard uploads (on embedded SQLite the write
lock would stall every other writer — the export's own lease keeper included — for the whole upload):

1. **claim-and-commit** (one short transaction): insert the dataset row as `pending` and claim the rows
   for it — `UPDATE feedback SET dataset_id = …` over `SELECT id … WHERE dataset_id IS NULL ORDER BY id
   LIMIT n FOR UPDATE SKIP LOCKED` on Postgres, a `BEGIN IMMEDIATE` write transaction on SQLite. Once
   committed the rows belong to this job's dataset: no other export can take them.
2. **upload** (no transaction open): read the claimed rows, write the shard, then the manifest — after
   the claim's commit, so a manifest only ever describes committed claims — under an attempt-scoped
   prefix `datasets/<uid>/<token>/`: a stale attempt can never overwrite the files the row will name.
3. **finalise** (one short transaction): fill in the dataset row (counts, sha256, the attempt's prefix),
   mark it `ready`, and mark the job done (`JobContext.finish`) — only if this attempt still holds its
   lease and no cancel was requested; otherwise it all rolls back.

Why it is safe to run anywhere, any number of times at once, and to crash anywhere:

* Nothing about "which rows are new" depends on an id watermark: a row whose id was drawn before a
  concurrent, slower insert committed is still `dataset_id IS NULL` and is picked up by a later export.
* A crash before step 1 commits rolls back: no dataset row, rows unclaimed. A crash after it leaves a
  `pending` dataset of this job: the job's retry resumes it (same rows, new attempt prefix). If the
  job never finishes (failed, cancelled), the next export releases that pending claim first, so no
  row is lost.
* The dataset uid is derived from the job id: a job never makes a second dataset.

How it is fast on Postgres (`workers.export.postgres`): the claim statement returns only the count and
id range; one `COPY (…) TO STDOUT` then streams the shard lines the server renders in (content_hash, id)
order, and the client only counts, gzips and uploads them (on another thread). `feedback` carries no
index or foreign key the claim does not need, because each one is paid once per claimed row.
SQLite formats the lines in Python (`shard.ShardWriter`), the same format.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Dataset, Feedback, Job, JobState
from common.errors import DatabaseUnavailable, PermanentError, ValidationError
from common.objectstore.artifacts import MANIFEST
from common.objectstore.base import ObjectStore
from common.objectstore.keys import join
from workers.export.config import ExportConfig
from workers.export.postgres import claim, shard_lines_sql, stream_shard
from workers.export.shard import (
    SCHEMA_VERSION,
    SHARD_NAME,
    ShardCounts,
    ShardWriter,
    dataset_manifest,
    iter_dataset_rows,
)

# Fixed namespace: the same job id maps to the same dataset uid on every machine and every retry.
_UID_NAMESPACE = uuid.UUID("6f1c3a52-5c1e-4f0e-9a57-2f8d1f0e7c11")
_MAX_JOB_ID = 36  # datasets.job_id column width


@dataclass(frozen=True)
class ExportResult:
    """Outcome of one export: `exported` (a dataset exists for this job) or `skipped` (nothing claimed)."""

    status: str
    reason: str
    dataset_id: int | None = None
    dataset_uid: str | None = None
    uri: str | None = None
    manifest_key: str | None = None
    claimed: int = 0
    rows: int = 0
    train: int = 0
    probe: int = 0
    holdout: int = 0
    duplicates: int = 0
    skipped: int = 0
    sha256: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase: where an export spends it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_uid(job_id: str) -> str:
    """The dataset uid a job publishes under; deterministic so a retry overwrites, never duplicates."""
    return uuid.uuid5(_UID_NAMESPACE, f"export:{job_id}").hex


def dataset_prefix(uid: str) -> str:
    return join("datasets", uid)


def _result_from_row(row: Dataset, reason: str) -> ExportResult:
    return ExportResult(
        status="exported",
        reason=reason,
        dataset_id=row.id,
        dataset_uid=row.uid,
        uri=row.uri,
        manifest_key=row.manifest_key,
        claimed=row.num_rows + row.num_duplicates + row.num_skipped,
        rows=row.num_rows,
        train=row.num_train,
        probe=row.num_rows - row.num_train - row.num_holdout,  # not a column: the rest of the rows
        holdout=row.num_holdout,
        duplicates=row.num_duplicates,
        skipped=row.num_skipped,
        sha256=row.sha256,
    )


Finish = Callable[[Session, dict[str, Any]], None]


@dataclass(frozen=True)
class _Claimed:
    dataset_id: int
    claimed: int
    low_id: int | None
    high_id: int | None
    claim_seconds: float = 0.0


def _existing(sessions: sessionmaker[Session], job_id: str) -> ExportResult | _Claimed | None:
    """This job's dataset: a finished one (its result), a pending one (resume it), or None."""
    with session_scope(sessions) as session:
        row = session.scalar(select(Dataset).where(Dataset.job_id == job_id))
        if row is None:
            return None
        if row.state != "pending":
            return _result_from_row(row, "already exported by this job")
        low, high = row.min_feedback_id, row.max_feedback_id
        claimed = session.scalar(  # by the primary-key range it claimed: `dataset_id` has no index
            select(func.count()).select_from(Feedback)
            .where(Feedback.id.between(low, high), Feedback.dataset_id == row.id)
        ) if low is not None else 0
        return _Claimed(row.id, claimed, low, high)


def export_feedback(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    config: ExportConfig,
    job_id: str,
    *,
    after_upload: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    finish: Finish | None = None,
    attempt_prefix: Callable[[str], str] | None = None,
) -> ExportResult:
    """Export every unclaimed feedback row (up to `config.max_rows`) into one dataset.

    `after_upload` runs after the shard and manifest are stored and before the finalising commit (tests
    inject a crash there). `progress(rows_done, rows_claimed)` is called once per fetched batch.
    `finish(session, result)` runs inside the finalising transaction (the runner's fenced job finish);
    `attempt_prefix` maps the dataset's prefix to this attempt's. Running the same `job_id` again
    returns the dataset it already produced, or resumes the one it claimed.
    """
    if not job_id or len(job_id) > _MAX_JOB_ID:
        raise ValidationError(f"export job_id must be 1-{_MAX_JOB_ID} characters, got {job_id!r}")
    found = _existing(sessions, job_id)
    if isinstance(found, ExportResult):
        return found
    try:
        claimed = found if found is not None else _claim_and_commit(sessions, config, job_id)
        if isinstance(claimed, ExportResult):  # skipped: too few rows
            return claimed
        return _upload_and_finalise(sessions, store, config, job_id, claimed, after_upload, progress, finish,
                                    attempt_prefix or (lambda prefix: prefix))
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"database unreachable or busy during export ({exc.orig.__class__.__name__}): retry the job"
        ) from exc


def _claim_and_commit(sessions: sessionmaker[Session], config: ExportConfig, job_id: str) -> _Claimed | ExportResult:
    """Step 1: the pending dataset row and the claim, in one short transaction."""
    session = sessions()
    try:
        dialect = session.get_bind().dialect.name
        connection = session.connection()
        if dialect == "sqlite":
            # Take the write lock up front: a deferred transaction that reads first can fail to upgrade.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        _release_abandoned_claims(session)
        uid = dataset_uid(job_id)
        prefix = dataset_prefix(uid)
        # The dataset row comes first (its id is what the claim writes).
        dataset_id = session.execute(
            insert(Dataset)
            .values(
                uid=uid, kind="feedback", uri="", manifest_key=join(prefix, MANIFEST), num_rows=0, num_train=0,
                num_holdout=0, num_duplicates=0, num_skipped=0, sha256="", schema_version=SCHEMA_VERSION,
                policy=config.policy(), job_id=job_id, state="pending",
            )
            .returning(Dataset.id)
        ).scalar_one()
        started = time.perf_counter()
        if dialect == "postgresql":
            claimed, low_id, high_id = claim(connection, config, dataset_id)
        else:
            claimed, low_id, high_id = _claim_sqlite(session, config, dataset_id)
        if claimed < config.min_rows:
            session.rollback()  # unclaims the rows and drops the placeholder dataset row
            return ExportResult(status="skipped", reason=f"{claimed} new feedback rows, fewer than the {config.min_rows} "
                                "a cycle needs", claimed=0)
        session.execute(update(Dataset).where(Dataset.id == dataset_id)
                        .values(min_feedback_id=low_id, max_feedback_id=high_id))
        session.commit()
        return _Claimed(dataset_id, claimed, low_id, high_id, time.perf_counter() - started)
    except IntegrityError:
        # The same job ran concurrently and committed its claim first (datasets.job_id is unique).
        session.rollback()
        found = _existing(sessions, job_id)
        if found is None:
            raise
        return found  # type: ignore[return-value] - ExportResult or _Claimed
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _release_abandoned_claims(session: Session) -> None:
    """Give back the rows of pending datasets whose export job ended without finishing them (failed,
    cancelled): otherwise those rows would never land in any dataset. Jobs unknown to the ledger
    (direct callers) are left alone: they finish or resume their own."""
    ended = select(Job.id).where(Job.state.in_([JobState.failed.value, JobState.cancelled.value]))
    abandoned = select(Dataset.id).where(Dataset.state == "pending", Dataset.job_id.in_(ended))
    ids = list(session.scalars(abandoned))
    if ids:
        session.execute(update(Feedback).where(Feedback.dataset_id.in_(ids)).values(dataset_id=None))
        session.execute(delete(Dataset).where(Dataset.id.in_(ids), Dataset.state == "pending"))


def _upload_and_finalise(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    config: ExportConfig,
    job_id: str,
    claimed: _Claimed,
    after_upload: Callable[[], None] | None,
    progress: Callable[[int, int], None] | None,
    finish: Finish | None,
    attempt_prefix: Callable[[str], str],
) -> ExportResult:
    """Steps 2 and 3: stream the claimed rows into the shard + manifest (no lock held), then finalise."""
    uid = dataset_uid(job_id)
    prefix = attempt_prefix(dataset_prefix(uid))
    manifest_key = join(prefix, MANIFEST)
    uri = f"{store.url.rstrip('/')}/{prefix}"
    dataset_id = claimed.dataset_id
    started = time.perf_counter()
    first_batch_at = None
    session = sessions()
    try:  # a read-only transaction: on SQLite (WAL) readers never block writers
        connection = session.connection()
        dialect = session.get_bind().dialect.name
        with store.open_write(join(prefix, SHARD_NAME)) as dst, ShardWriter(dst, config, background=True) as writer:
            if dialect == "postgresql":
                # The dedup sort runs on the server; more sort memory keeps it off disk (this transaction only).
                connection.exec_driver_sql("SET LOCAL work_mem = '256MB'")
                # The server renders the lines; the client counts, compresses and uploads them.
                writer.counts.min_feedback_id, writer.counts.max_feedback_id = claimed.low_id, claimed.high_id
                sql = shard_lines_sql(config, dataset_id, claimed.low_id, claimed.high_id)
                for chunk in stream_shard(connection.connection.driver_connection, sql, writer.counts):
                    if first_batch_at is None:
                        first_batch_at = time.perf_counter()  # the database's sort is done by now
                    writer.write_lines(chunk)
                    if progress is not None:
                        progress(writer.counts.claimed, claimed.claimed)
                if writer.counts.claimed != claimed.claimed:  # never expected: the read must see exactly the claim
                    raise PermanentError(
                        f"export read {writer.counts.claimed} of its {claimed.claimed} claimed rows: retry the job")
            else:
                for batch in _fetch_claimed(connection.connection.driver_connection, dataset_id, config.fetch_rows):
                    if first_batch_at is None:
                        first_batch_at = time.perf_counter()
                    writer.write_rows(batch)
                    if progress is not None:
                        progress(writer.counts.claimed, claimed.claimed)
            sha256, size = writer.close()
    finally:
        session.rollback()
        session.close()
    counts: ShardCounts = writer.counts
    manifest = dataset_manifest(prefix, sha256, size, counts, config, uid=uid, job_id=job_id)
    store.put_bytes(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())  # after the shard

    if after_upload is not None:
        after_upload()
    uploaded_at = time.perf_counter()
    result = ExportResult(
        status="exported",
        reason=f"exported {counts.written} rows from {claimed.claimed} claimed",
        dataset_id=dataset_id,
        dataset_uid=uid,
        uri=uri,
        manifest_key=manifest_key,
        claimed=claimed.claimed,
        rows=counts.written,
        train=counts.train,
        probe=counts.probe,
        holdout=counts.holdout,
        duplicates=counts.duplicates,
        skipped=counts.skipped,
        sha256=sha256,
    )
    with session_scope(sessions) as session:
        finalised = session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.state == "pending")
            .values(
                num_rows=counts.written, num_train=counts.train, num_holdout=counts.holdout,
                num_duplicates=counts.duplicates, num_skipped=counts.skipped, sha256=sha256,
                min_feedback_id=counts.min_feedback_id, max_feedback_id=counts.max_feedback_id,
                uri=uri, manifest_key=manifest_key, state="ready",
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if not finalised:  # another attempt of this job finalised first (we must be stale)
            raise PermanentError(f"export {job_id}: dataset {dataset_id} was finalised by another attempt")
        if finish is not None:
            finish(session, result.as_dict())  # fenced: refused (and all rolled back) unless we hold the lease
    committed_at = time.perf_counter()
    _drop_other_attempts(store, dataset_prefix(uid), prefix)
    return ExportResult(**{**result.as_dict(), "seconds": {
        "claim": round(claimed.claim_seconds, 3),
        "first_batch": round((first_batch_at or started) - started, 3),  # mostly the dedup sort
        "stream_and_upload": round(uploaded_at - (first_batch_at or started), 3),
        "commit": round(committed_at - uploaded_at, 3),
    }})


def _drop_other_attempts(store: ObjectStore, root: str, ours: str) -> None:
    """Best effort: remove what earlier (crashed or stale) attempts left under the dataset's prefix;
    no row points there, and ours is registered."""
    if root == ours:
        return
    try:
        for key in list(store.list(root.rstrip("/") + "/")):
            if not key.startswith(ours.rstrip("/") + "/"):
                store.delete(key)
    except Exception:  # noqa: BLE001 - debris is harmless; never fail a committed export over it
        pass


def _claim_sqlite(session: Session, config: ExportConfig, dataset_id: int) -> tuple[int, int | None, int | None]:
    """SQLite: claim up to `max_rows` unclaimed rows in id order (BEGIN IMMEDIATE already serialises)."""
    feedback = Feedback.__table__
    pick = select(feedback.c.id).where(feedback.c.dataset_id.is_(None)).order_by(feedback.c.id).limit(config.max_rows)
    count = session.execute(
        update(feedback).where(feedback.c.id.in_(pick.scalar_subquery())).values(dataset_id=dataset_id)
    ).rowcount
    low, high = session.execute(
        select(func.min(feedback.c.id), func.max(feedback.c.id)).where(feedback.c.dataset_id == dataset_id)
    ).one()
    return count, low, high


# SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC (our rows are all UTC).
_SQLITE_CREATED_AT_ISO = "replace(created_at, ' ', 'T') || '+00:00'"


def _fetch_claimed(driver, dataset_id: int, fetch_rows: int) -> Iterator[list[tuple]]:  # noqa: ANN001
    """SQLite: batches of the claimed rows ordered by (content_hash, id), straight from the driver
    (SQLAlchemy's per-row Row objects cost more than the export); its cursor steps lazily by itself."""
    sql = (
        f"SELECT id, prompt, response, CAST(messages AS TEXT), feedback, content_hash, {_SQLITE_CREATED_AT_ISO} "
        f"FROM feedback WHERE dataset_id = {int(dataset_id)} ORDER BY content_hash, id"
    )
    cursor = driver.cursor()
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(fetch_rows):
            yield batch
    finally:
        cursor.close()


__all__ = ["ExportResult", "dataset_prefix", "dataset_uid", "export_feedback", "iter_dataset_rows"]
