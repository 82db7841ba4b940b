"""The Postgres fast path of the export: the server claims, counts, dedups and renders the shard lines.

Why: at a million rows the Python loop that formats one line per row (plus the driver turning every
column into a Python object) was the largest client cost. Here the claim statement also returns the
batch's counts, and one `COPY (SELECT <json line> …) TO STDOUT` streams finished JSONL bytes that the
client only gzips and uploads. The lines are the same format `shard.ShardWriter` writes (SQLite's path):
same keys and order, same weights, same dedup rule (the first row, lowest id, of each content hash in
(content_hash, id) order) and the same split (`shard.split_of`, keyed on the prompt).
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection

from common.errors import PermanentError
from workers.export.config import ExportConfig
from workers.export.shard import ShardCounts, line_encoding

# `shard.prompt_bucket` in SQL: the first 4 bytes of sha256(prompt) as an unsigned 32-bit number, mod 100.
_BUCKET = "(('x' || left(encode(sha256(convert_to(prompt, 'UTF8')), 'hex'), 8))::bit(32)::bigint % 100)"
# Dedup runs over the batch in (content_hash, id) byte order, as the Python writer reads it.
_FIRST_OF_HASH = (
    'content_hash IS DISTINCT FROM lag(content_hash) OVER (ORDER BY content_hash COLLATE "C", id) AS first_of_hash'
)


def _kept_feedback(config: ExportConfig) -> dict[str, tuple[str, str]]:
    """feedback value → (weight, unlikelihood) JSON text, only for values the policy keeps."""
    return {value: encoded for value, encoded in line_encoding(config).items() if encoded is not None}


def _sql_list(values: list[str]) -> str:
    # The values are our own constants ("thumbs_up", …), never user input; quoted for the IN list.
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values) or "NULL"


def claim(connection: Connection, config: ExportConfig, dataset_id: int) -> tuple[int, int | None, int | None]:
    """Claim up to `max_rows` unclaimed rows for `dataset_id` (FOR UPDATE SKIP LOCKED): (count, lowest
    id, highest id). The range is the read path of the shard query, not a watermark: that query still
    filters on `dataset_id`, so other exporters' rows inside the range never get in."""
    sql = """
        WITH claimed AS (
            UPDATE feedback SET dataset_id = :dataset_id
            WHERE id IN (
                SELECT id FROM feedback WHERE dataset_id IS NULL ORDER BY id LIMIT :max_rows
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id
        )
        SELECT count(*), min(id), max(id) FROM claimed
    """
    count, low, high = connection.execute(text(sql), {"dataset_id": dataset_id, "max_rows": config.max_rows}).one()
    return count, low, high


def shard_lines_sql(config: ExportConfig, dataset_id: int, low: int, high: int) -> str:
    """The COPY statement that streams the shard's JSONL lines (one column, one line per row).

    CSV format with \\x01 as the quote and \\x02 as the delimiter: a JSON text never holds either raw
    (to_json escapes control characters), so each value comes out verbatim, newline-terminated.
    The read scans the claimed primary-key range and keeps only this dataset's rows.
    """
    kept = _kept_feedback(config)
    weight = " ".join(f"WHEN '{value}' THEN '{encoded[0]}'" for value, encoded in kept.items())
    unlikelihood = " ".join(f"WHEN '{value}' THEN '{encoded[1]}'" for value, encoded in kept.items())
    holdout = int(config.holdout_percent)
    probe_limit = holdout + int(config.probe_percent)
    line = f"""'{{"feedback_id":' || id
        || ',"prompt":' || to_json(prompt)::text
        || ',"response":' || to_json(response)::text
        || ',"messages":' || coalesce(CAST(messages AS TEXT), 'null')
        || ',"feedback":"' || feedback
        || '","weight":' || CASE feedback {weight} END
        || ',"unlikelihood":' || CASE feedback {unlikelihood} END
        || ',"split":"' || CASE WHEN bucket < {holdout} THEN 'holdout'
                                WHEN bucket < {probe_limit} THEN 'probe' ELSE 'train' END
        || '","content_hash":"' || content_hash
        || '","created_at":"' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
        || '"}}'"""
    # Every claimed row yields one message, so the client counts the batch exactly as it streams:
    # a duplicate is the one-byte line "D", a row the policy skips is "S", the rest are shard lines.
    return f"""COPY (
        SELECT CASE WHEN NOT first_of_hash THEN 'D' WHEN feedback NOT IN ({_sql_list(list(kept))}) THEN 'S'
                    ELSE {line} END
        FROM (
            SELECT id, prompt, response, messages, feedback, content_hash, created_at, {_FIRST_OF_HASH},
                   {_BUCKET} AS bucket
            FROM feedback WHERE id BETWEEN {int(low)} AND {int(high)} AND dataset_id = {int(dataset_id)}
        ) batch
        ORDER BY content_hash COLLATE "C", id
    ) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"""


_DUPLICATE = b"D\n"
_SKIPPED = b"S\n"
_SPLIT = b'"split":"'


def stream_shard(driver, sql: str, counts: ShardCounts, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:  # noqa: ANN001
    """Run the COPY on the raw psycopg connection; yield about `chunk_bytes` of shard lines at a time
    and count into `counts` (claimed, written, train/holdout, duplicates, skipped) as lines arrive.

    The server sends one message per row; joining them into ~1 MiB chunks keeps the gzip and upload
    calls few while holding only one chunk in memory.
    """
    parts: list[bytes] = []
    size = claimed = duplicates = skipped = holdout = probe = 0
    with driver.cursor() as cursor, cursor.copy(sql) as copy:
        for message in copy:
            data = bytes(message)
            claimed += 1
            if data == _DUPLICATE:
                duplicates += 1
                continue
            if data == _SKIPPED:
                skipped += 1
                continue
            if data[0] != 0x7B:  # "{": COPY quoted the value (a raw newline in stored messages JSON)
                raise PermanentError(
                    f"feedback row rendered as a non-JSON line ({data[:60]!r}…): re-store its messages as compact JSON"
                )
            # The split is the LAST "split" key of the line: only a hash and a timestamp follow it.
            first = data[data.rfind(_SPLIT) + len(_SPLIT)]
            if first == 0x68:  # the "h" of "holdout"
                holdout += 1
            elif first == 0x70:  # the "p" of "probe"
                probe += 1
            parts.append(data)
            size += len(data)
            if size >= chunk_bytes:
                yield b"".join(parts)
                parts, size = [], 0
                _record(counts, claimed, duplicates, skipped, holdout, probe)
    if parts:
        yield b"".join(parts)
    _record(counts, claimed, duplicates, skipped, holdout, probe)


def _record(counts: ShardCounts, claimed: int, duplicates: int, skipped: int, holdout: int, probe: int) -> None:
    counts.claimed, counts.duplicates, counts.skipped = claimed, duplicates, skipped
    counts.written = claimed - duplicates - skipped
    counts.holdout, counts.probe = holdout, probe
    counts.train = counts.written - holdout - probe
