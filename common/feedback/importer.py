"""Feedback into the database: a JSONL file importer and a Python API for applications.

A row is a duplicate, counted and not inserted, when
* its judged content was imported before (in the database, or earlier in the same input): the
  conversation (prompt or messages), the response and the feedback value, as `content_hash` — so
  importing the same file twice adds nothing; or
* its optional `id` (the caller's own id, `external_id`) was imported before, even with other content.
Each batch first claims its new content hashes in `feedback_content`
(`INSERT … ON CONFLICT DO NOTHING RETURNING`), then inserts those rows into `feedback` with
`ON CONFLICT (external_id) DO NOTHING`; a hash whose row lost on its id is released again in the same
transaction. Both hold when two importers race. Invalid rows go to `feedback_quarantine` with
the line number, the reason and the (truncated) raw line. A file is imported in one transaction: a
crash leaves nothing half-imported, and re-running the import is safe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Feedback, FeedbackContent, FeedbackQuarantine
from common.errors import PermanentError, ValidationError
from common.feedback.schema import FeedbackRow, parse_line, problems_of
from common.settings import Settings

BATCH_ROWS = 2_000
RAW_KEEP_CHARS = 2_000
SHOWN_PROBLEMS = 5  # enough of a bad line to recognise it, not a copy of a huge one


@dataclass(frozen=True)
class ImportSummary:
    """How an import went: rows inserted, rows whose external id was already known, rows rejected."""

    inserted: int = 0
    duplicate: int = 0
    quarantined: int = 0
    first_problems: tuple[str, ...] = ()  # "line N: reason" of the first few quarantined rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "duplicate": self.duplicate,
            "quarantined": self.quarantined,
            "first_problems": list(self.first_problems),
        }


def _dialect_insert(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise PermanentError(f"feedback import supports PostgreSQL and SQLite, not {dialect}")
    return dialect_insert


def _insert_ignoring_known_ids(session: Session):
    """The dialect's INSERT with ON CONFLICT (external_id) DO NOTHING, returning inserted rows' hashes."""
    table = Feedback.__table__
    # The target names the partial unique index ux_feedback_external_id (rows without an id stay out of it).
    return (
        _dialect_insert(session)(table)
        .on_conflict_do_nothing(index_elements=["external_id"], index_where=table.c.external_id.is_not(None))
        .returning(table.c.content_hash)
    )


def _claim_content(session: Session):
    """INSERT INTO feedback_content … ON CONFLICT DO NOTHING RETURNING the hashes that were new."""
    table = FeedbackContent.__table__
    return _dialect_insert(session)(table).on_conflict_do_nothing().returning(table.c.content_hash)


class _BatchWriter:
    """Buffers validated rows and quarantine entries; flushes them as multi-row inserts."""

    def __init__(self, session: Session, seen_ids: set[str]):
        self.session = session
        self.statement = _insert_ignoring_known_ids(session)
        self.claim_statement = _claim_content(session)
        self.seen_ids = seen_ids  # external ids already taken earlier in this input
        self.rows: list[dict[str, Any]] = []
        self.bad: list[dict[str, Any]] = []
        self.inserted = self.duplicate = self.quarantined = 0
        self.first_problems: list[str] = []
        self.received_at = datetime.now(timezone.utc)

    def add(self, row: FeedbackRow) -> None:
        if row.external_id is not None:
            if row.external_id in self.seen_ids:
                self.duplicate += 1
                return
            self.seen_ids.add(row.external_id)
        self.rows.append(row.to_db(self.received_at))
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def _rows_with_new_content(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The first row of each content hash not imported before (claimed in `feedback_content`)."""
        first: dict[str, dict[str, Any]] = {}
        for row in rows:
            first.setdefault(row["content_hash"], row)
        claimed = {h for (h,) in self.session.execute(
            self.claim_statement, [{"content_hash": h} for h in first]).all()}
        return [row for h, row in first.items() if h in claimed]

    def quarantine(self, source: str, line_number: int | None, raw: str, problems: list[str]) -> None:
        self.bad.append(
            {
                "source": source[-500:],
                "line_number": line_number,
                "raw": raw[:RAW_KEEP_CHARS].replace("\x00", "\\x00"),
                "reason": "; ".join(problems),
                "created_at": self.received_at,
            }
        )
        self.quarantined += 1
        if len(self.first_problems) < SHOWN_PROBLEMS:
            self.first_problems.append(f"line {line_number}: {'; '.join(problems)}")
        if len(self.bad) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            fresh = self._rows_with_new_content(self.rows)
            self.duplicate += len(self.rows) - len(fresh)
            if fresh:
                stored = {h for (h,) in self.session.execute(self.statement, fresh).all()}
                self.inserted += len(stored)
                # Rows the ON CONFLICT skipped had an external id stored by an earlier import: their
                # content was not stored after all, so its claim is released.
                self.duplicate += len(fresh) - len(stored)
                released = [r["content_hash"] for r in fresh if r["content_hash"] not in stored]
                if released:
                    self.session.execute(delete(FeedbackContent).where(FeedbackContent.content_hash.in_(released)))
            self.rows = []
        if self.bad:
            fresh_bad = self._not_yet_quarantined(self.bad)
            if fresh_bad:
                self.session.execute(insert(FeedbackQuarantine.__table__), fresh_bad)
            self.bad = []

    def _not_yet_quarantined(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Entries whose (file, line, text) is not in the quarantine already: importing the same file
        again reports its bad rows again but does not store them twice."""
        table = FeedbackQuarantine.__table__
        known = set(self.session.execute(
            select(table.c.source, table.c.line_number, table.c.raw).where(
                table.c.source.in_({e["source"] for e in entries}),
                table.c.line_number.in_({e["line_number"] for e in entries if e["line_number"] is not None}),
            )).all())
        fresh, seen = [], set()
        for entry in entries:
            key = (entry["source"], entry["line_number"], entry["raw"])
            if key not in known and key not in seen:
                seen.add(key)
                fresh.append(entry)
        return fresh

    def summary(self) -> ImportSummary:
        self.flush()
        return ImportSummary(self.inserted, self.duplicate, self.quarantined, tuple(self.first_problems))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of each non-blank line, streamed."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw


def import_feedback_file(
    sessions: sessionmaker[Session],
    settings: Settings,
    path: str | os.PathLike[str],
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import a JSONL feedback file; `progress(bytes_read_so_far)` is called once per batch.

    Raises PermanentError if the file cannot be read; bad rows never raise, they are quarantined.
    """
    path = Path(path)
    if not path.is_file():
        raise PermanentError(f"feedback file {str(path)!r} does not exist: check the path")
    source = str(path)
    max_chars = settings.feedback_max_chars
    with session_scope(sessions) as session:
        writer = _BatchWriter(session, seen_ids=set())
        bytes_read = 0
        for number, raw in _lines(path):
            bytes_read += len(raw) + 1
            row, problems = parse_line(raw, max_chars)
            if row is None:
                writer.quarantine(source, number, raw.decode("utf-8", errors="backslashreplace"), problems)
            else:
                writer.add(row)
            if progress is not None and number % BATCH_ROWS == 0:
                progress(bytes_read)
        return writer.summary()


def record_feedback_rows(
    sessions: sessionmaker[Session], settings: Settings, rows: Iterable[Mapping[str, Any]]
) -> ImportSummary:
    """Insert feedback rows given as dicts (either shape); all or nothing.

    Every row is validated first; if any fails, ValidationError lists every problem of every row
    (prefixed `row N:`) and nothing is inserted. Known external ids count as duplicates.
    """
    valid: list[FeedbackRow] = []
    problems: list[str] = []
    for index, data in enumerate(rows):
        row, row_problems = problems_of(dict(data) if isinstance(data, Mapping) else data, settings.feedback_max_chars)
        if row is None:
            problems.extend(f"row {index}: {p}" for p in row_problems)
        else:
            valid.append(row)
    if problems:
        raise ValidationError(problems)
    with session_scope(sessions) as session:
        writer = _BatchWriter(session, seen_ids=set())
        for row in valid:
            writer.add(row)
        return writer.summary()


def record_feedback(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    feedback: str,
    prompt: str | None = None,
    response: str | None = None,
    messages: list[dict[str, str]] | None = None,
    created_at: str | datetime | None = None,
    external_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> bool:
    """Record one judgement from an application; True if stored, False if its external id was known.

    Give `prompt` + `response`, or `messages` (the last assistant message is the response).
    Raises ValidationError listing every problem.
    """
    data: dict[str, Any] = {"feedback": feedback}
    if messages is not None:
        data["messages"] = messages
    if prompt is not None:
        data["prompt"] = prompt
    if response is not None:
        data["response"] = response
    if messages is None and prompt is None and response is None:
        data["prompt"] = None  # reported as "missing 'prompt'" rather than silently accepted
    if created_at is not None:
        data["created_at"] = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    if external_id is not None:
        data["id"] = external_id
    if metadata is not None:
        data["metadata"] = metadata
    return record_feedback_rows(sessions, settings, [data]).inserted == 1


__all__ = ["ImportSummary", "import_feedback_file", "record_feedback", "record_feedback_rows"]
