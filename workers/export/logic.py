"""The export job's logic: claim unexported feedback as one batch, publish a dataset shard, record it.

Why it is safe to run anywhere, any number of times at once:

* The claim, the dataset row and the row→dataset links live in ONE database transaction that stays
  open while the shard is uploaded. The claim is an `UPDATE feedback SET dataset_id = …` over
  `SELECT id … WHERE dataset_id IS NULL ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED` (Postgres): the
  rows are locked and invisible to other exporters, which skip them, until we commit. On SQLite a
  `BEGIN IMMEDIATE` write transaction serialises exporters instead.
* Nothing about "which rows are new" depends on an id watermark: a row whose id was drawn before a
  concurrent, slower insert committed is still `dataset_id IS NULL` and is picked up by a later export.
* A crash (or error) anywhere before the commit rolls everything back: no dataset row, rows unclaimed.
  The shard and manifest already uploaded sit under a job-scoped prefix `datasets/<uid>/`
  (uid derived from the job id); the retry of the same job overwrites them and commits once.
* The manifest is written after the shard, so a half-uploaded dataset is never readable.

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

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Dataset, Feedback
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


def _existing(sessions: sessionmaker[Session], job_id: str) -> ExportResult | None:
    with session_scope(sessions) as session:
        row = session.scalar(select(Dataset).where(Dataset.job_id == job_id))
        return _result_from_row(row, "already exported by this job") if row is not None else None


def export_feedback(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    config: ExportConfig,
    job_id: str,
    *,
    after_upload: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export every unclaimed feedback row (up to `config.max_rows`) into one dataset.

    `after_upload` runs after the shard and manifest are stored and before the commit (tests inject a
    crash there). `progress(rows_done, rows_claimed)` is called once per fetched batch. Running the
    same `job_id` again returns the dataset it already produced.
    """
    if not job_id or len(job_id) > _MAX_JOB_ID:
        raise ValidationError(f"export job_id must be 1-{_MAX_JOB_ID} characters, got {job_id!r}")
    done = _existing(sessions, job_id)
    if done is not None:
        return done
    session = sessions()
    try:
        return _claim_and_publish(session, store, config, job_id, after_upload, progress)
    except IntegrityError:
        # The same job ran concurrently and committed first (datasets.job_id is unique).
        session.rollback()
        done = _existing(sessions, job_id)
        if done is None:
            raise
        return done
    except OperationalError as exc:
        session.rollback()
        raise DatabaseUnavailable(
            f"database unreachable or busy during export ({exc.orig.__class__.__name__}): retry the job"
        ) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _claim_and_publish(
    session: Session,
    store: ObjectStore,
    config: ExportConfig,
    job_id: str,
    after_upload: Callable[[], None] | None,
    progress: Callable[[int, int], None] | None,
) -> ExportResult:
    dialect = session.get_bind().dialect.name
    connection = session.connection()
    if dialect == "sqlite":
        # Take the write lock up front: a deferred transaction that reads first can fail to upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        # The dedup sort runs on the server; more sort memory keeps it off disk (this transaction only).
        connection.exec_driver_sql("SET LOCAL work_mem = '256MB'")

    uid = dataset_uid(job_id)
    prefix = dataset_prefix(uid)
    manifest_key = join(prefix, MANIFEST)
    uri = f"{store.url.rstrip('/')}/{prefix}"
    # The dataset row comes first (its id is what the claim writes); it is invisible until commit.
    dataset_id = session.execute(
        insert(Dataset)
        .values(
            uid=uid, kind="feedback", uri=uri, manifest_key=manifest_key, num_rows=0, num_train=0, num_holdout=0,
            num_duplicates=0, num_skipped=0, sha256="", schema_version=SCHEMA_VERSION, policy=config.policy(),
            job_id=job_id,
        )
        .returning(Dataset.id)
    ).scalar_one()

    started = time.perf_counter()
    if dialect == "postgresql":
        claimed, low_id, high_id = claim(connection, config, dataset_id)
    else:
        claimed = _claim_sqlite(session, config, dataset_id)
    if claimed < config.min_rows:
        session.rollback()  # unclaims the rows and drops the placeholder dataset row
        return ExportResult(status="skipped", reason=f"skipped: {claimed} < minimum {config.min_rows}", claimed=0)

    claimed_at = time.perf_counter()
    first_batch_at = None
    with store.open_write(join(prefix, SHARD_NAME)) as dst, ShardWriter(dst, config, background=True) as writer:
        if dialect == "postgresql":
            # The server renders the lines; the client counts, compresses and uploads them.
            writer.counts.min_feedback_id, writer.counts.max_feedback_id = low_id, high_id
            sql = shard_lines_sql(config, dataset_id, low_id, high_id)
            for chunk in stream_shard(connection.connection.driver_connection, sql, writer.counts):
                if first_batch_at is None:
                    first_batch_at = time.perf_counter()  # the database's sort is done by now
                writer.write_lines(chunk)
                if progress is not None:
                    progress(writer.counts.claimed, claimed)
            if writer.counts.claimed != claimed:  # never expected: the read must see exactly the claim
                raise PermanentError(f"export read {writer.counts.claimed} of its {claimed} claimed rows: retry the job")
        else:
            for batch in _fetch_claimed(connection.connection.driver_connection, dataset_id, config.fetch_rows):
                if first_batch_at is None:
                    first_batch_at = time.perf_counter()
                writer.write_rows(batch)
                if progress is not None:
                    progress(writer.counts.claimed, claimed)
        sha256, size = writer.close()
    counts: ShardCounts = writer.counts
    manifest = dataset_manifest(prefix, sha256, size, counts, config, uid=uid, job_id=job_id)
    store.put_bytes(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())  # LAST

    if after_upload is not None:
        after_upload()

    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id)
        .values(
            num_rows=counts.written, num_train=counts.train, num_holdout=counts.holdout,
            num_duplicates=counts.duplicates, num_skipped=counts.skipped, sha256=sha256,
            min_feedback_id=counts.min_feedback_id, max_feedback_id=counts.max_feedback_id,
        )
    )
    uploaded_at = time.perf_counter()
    session.commit()
    committed_at = time.perf_counter()
    return ExportResult(
        status="exported",
        reason=f"exported {counts.written} rows from {claimed} claimed",
        dataset_id=dataset_id,
        dataset_uid=uid,
        uri=uri,
        manifest_key=manifest_key,
        claimed=claimed,
        rows=counts.written,
        train=counts.train,
        probe=counts.probe,
        holdout=counts.holdout,
        duplicates=counts.duplicates,
        skipped=counts.skipped,
        sha256=sha256,
        seconds={
            "claim": round(claimed_at - started, 3),
            "first_batch": round((first_batch_at or claimed_at) - claimed_at, 3),  # mostly the dedup sort
            "stream_and_upload": round(uploaded_at - (first_batch_at or claimed_at), 3),
            "commit": round(committed_at - uploaded_at, 3),
        },
    )


def _claim_sqlite(session: Session, config: ExportConfig, dataset_id: int) -> int:
    """SQLite: claim up to `max_rows` unclaimed rows in id order (BEGIN IMMEDIATE already serialises)."""
    feedback = Feedback.__table__
    pick = select(feedback.c.id).where(feedback.c.dataset_id.is_(None)).order_by(feedback.c.id).limit(config.max_rows)
    return session.execute(
        update(feedback).where(feedback.c.id.in_(pick.scalar_subquery())).values(dataset_id=dataset_id)
    ).rowcount


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
