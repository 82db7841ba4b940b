"""The dataset shard format: gzip JSONL written in one streaming pass, read back the same way.

Each line is one training sample:
``{"feedback_id", "prompt", "response", "messages", "feedback", "weight", "unlikelihood",
"split": "train"|"probe"|"holdout", "content_hash", "created_at"}``.

Splits (chosen by `prompt_bucket`, a hash of the conversation before the response, so one prompt is
never on two sides): `train` is taught and later replayed; `probe` is taught in its own cycle and
never replayed, so later cycles measure retention on it honestly; `holdout` is never trained
(generalisation). Shards written before the probe split simply have no `probe` rows.

The writer takes rows ordered by (content_hash, id) so an exact duplicate is simply "same hash as the
previous row" — constant memory, where a set of seen hashes would grow with the batch. The hot loop
formats lines with `%` and the C string escaper instead of building and dumping a dict per row.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _quote  # the C escaper json.dumps uses for str
from typing import Any, BinaryIO

from common.errors import ObjectNotFound, PermanentError
from common.objectstore.artifacts import MANIFEST
from common.objectstore.base import ObjectStore
from common.objectstore.keys import join
from common.settings import FeedbackPolicy
from workers.export.config import ExportConfig

# The split hashes every row's prompt in the export's hot loop. CPython's built-in sha256 is about twice
# as fast as OpenSSL's on short texts (object set-up dominates); the digest is the same either way.
try:
    from _sha256 import sha256 as _sha256  # CPython 3.11
except ImportError:  # pragma: no cover - other interpreters
    try:
        from _sha2 import sha256 as _sha256  # CPython 3.12+
    except ImportError:
        from hashlib import sha256 as _sha256

SCHEMA_VERSION = 1
SHARD_NAME = "data.jsonl.gz"
SPLITS = ("train", "probe", "holdout")
TAUGHT_SPLITS = ("train", "probe")  # what a cycle trains on; replay reads only "train"

_LINE = (
    '{"feedback_id":%d,"prompt":%s,"response":%s,"messages":%s,"feedback":"%s","weight":%s,'
    '"unlikelihood":%s,"split":"%s","content_hash":"%s","created_at":"%s"}\n'
)


def prompt_bucket(prompt: str) -> int:
    """0-99 from the sha256 of the prompt text (the feedback row's `prompt`: the whole conversation
    before the judged response, rendered by `common.feedback.schema.render_prompt`).

    Keyed on the prompt alone, not the response or the feedback, so every answer to one prompt lands
    in the same split, in every export. Postgres computes the same number in SQL
    (`workers.export.postgres._BUCKET`)."""
    return int.from_bytes(_sha256(prompt.encode("utf-8")).digest()[:4], "big") % 100


def split_of(prompt: str, holdout_percent: int, probe_percent: int = 0) -> str:
    """Deterministic split of a prompt: buckets [0, holdout) → holdout, then `probe_percent` → probe."""
    bucket = prompt_bucket(prompt)
    if bucket < holdout_percent:
        return "holdout"
    return "probe" if bucket < holdout_percent + probe_percent else "train"


@dataclass
class ShardCounts:
    """What one pass over the claimed rows produced."""

    claimed: int = 0
    written: int = 0
    train: int = 0
    probe: int = 0
    holdout: int = 0
    duplicates: int = 0
    skipped: int = 0
    min_feedback_id: int | None = None
    max_feedback_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _HashingSink(io.RawIOBase):
    """Passes compressed bytes to the store while hashing and counting them (the manifest's sha256)."""

    def __init__(self, dst: BinaryIO):
        self._dst = dst
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self._dst.write(data)
        return len(data)


class _BackgroundCompressor:
    """gzip + upload on a worker thread: zlib and the socket release the GIL, so both overlap the
    formatting of the next batch. At most `depth` formatted batches wait; errors surface on the next
    `write` or in `finish`."""

    def __init__(self, gzip_file: gzip.GzipFile, depth: int = 2):
        self._gzip = gzip_file
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="export-compress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:  # after a failure keep draining so the producer never blocks
                try:
                    self._gzip.write(data)
                except BaseException as exc:  # re-raised in the producer's thread
                    self._error = exc

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> None:
        """Wait until everything queued is compressed and written; raise the worker's error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


def line_encoding(config: ExportConfig) -> dict[str, tuple[str, str] | None]:
    """feedback value → (weight, unlikelihood) as JSON text, or None where the policy skips the row."""
    down: tuple[str, str] | None
    if config.thumbs_down_policy is FeedbackPolicy.skip:
        down = None
    elif config.thumbs_down_policy is FeedbackPolicy.unlikelihood:
        down = ("1.0", "true")
    else:  # train_as_positive: the disliked response is learned as a target (opt-in only)
        down = (repr(float(config.thumbs_down_weight)), "false")
    return {"thumbs_up": (repr(float(config.thumbs_up_weight)), "false"), "thumbs_down": down}


class ShardWriter:
    """Streams rows `(id, prompt, response, messages_json, feedback, content_hash, created_at_iso)`,
    ordered by (content_hash, id), into a gzip JSONL stream, applying the policy as it goes.

    `messages_json` is the stored JSON text (or None) and `created_at_iso` an ISO-8601 UTC string, both
    produced by the database so the hot loop neither parses JSON nor formats datetimes.
    """

    def __init__(self, dst: BinaryIO, config: ExportConfig, background: bool = False):
        self._sink = _HashingSink(dst)
        # mtime=0: the same rows give the same bytes, so a retried export reproduces its sha256.
        self._gzip = gzip.GzipFile(fileobj=self._sink, mode="wb", compresslevel=config.compresslevel, mtime=0)
        self._out: gzip.GzipFile | _BackgroundCompressor = (
            _BackgroundCompressor(self._gzip) if background else self._gzip
        )
        self._holdout_percent = config.holdout_percent
        self._probe_limit = config.holdout_percent + config.probe_percent
        self._encoding = line_encoding(config)
        self._previous_hash: str | None = None
        self.counts = ShardCounts()

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Format and compress one fetched batch of rows."""
        counts = self.counts
        encoding = self._encoding
        holdout_percent = self._holdout_percent
        probe_limit = self._probe_limit
        sha256 = _sha256
        from_bytes = int.from_bytes
        previous = self._previous_hash
        lo = counts.min_feedback_id
        hi = counts.max_feedback_id
        lines: list[str] = []
        append = lines.append
        holdout = probe = 0
        for feedback_id, prompt, response, messages, feedback, chash, created_at in rows:
            if lo is None or feedback_id < lo:
                lo = feedback_id
            if hi is None or feedback_id > hi:
                hi = feedback_id
            if chash == previous:
                counts.duplicates += 1
                continue
            previous = chash
            encoded = encoding[feedback]
            if encoded is None:
                counts.skipped += 1
                continue
            bucket = from_bytes(sha256(prompt.encode("utf-8")).digest()[:4], "big") % 100  # prompt_bucket
            if bucket < holdout_percent:
                split = "holdout"
                holdout += 1
            elif bucket < probe_limit:
                split = "probe"
                probe += 1
            else:
                split = "train"
            append(
                _LINE
                % (
                    feedback_id,
                    _quote(prompt),
                    _quote(response),
                    messages or "null",
                    feedback,
                    encoded[0],
                    encoded[1],
                    split,
                    chash,
                    created_at,
                )
            )
        counts.claimed += len(rows)
        counts.written += len(lines)
        counts.holdout += holdout
        counts.probe += probe
        counts.train += len(lines) - holdout - probe
        counts.min_feedback_id, counts.max_feedback_id = lo, hi
        self._previous_hash = previous
        if lines:
            # _quote escapes every non-ASCII character (as json.dumps does); stored messages JSON may not.
            self._out.write("".join(lines).encode("utf-8"))

    def write_lines(self, data: bytes) -> None:
        """Compress already formatted lines (the Postgres path renders them on the server; its counts
        come from the claim statement)."""
        self._out.write(data)

    def close(self) -> tuple[str, int]:
        """Finish the gzip stream; (sha256, size) of the compressed shard."""
        if isinstance(self._out, _BackgroundCompressor):
            self._out.finish()
        self._gzip.close()
        return self._sink.sha256.hexdigest(), self._sink.size

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        # On an error, stop the worker thread before the store aborts the upload underneath it.
        if exc_type is not None and isinstance(self._out, _BackgroundCompressor):
            try:
                self._out.finish()
            except BaseException:  # the original error is the one that matters
                pass


def dataset_manifest(
    prefix: str, sha256: str, size: int, counts: ShardCounts, config: ExportConfig, *, uid: str, job_id: str
) -> dict[str, Any]:
    """The manifest, in the `common.objectstore.artifacts` layout (files → size, sha256) plus dataset facts."""
    return {
        "prefix": prefix,
        "files": {SHARD_NAME: {"size": size, "sha256": sha256}},
        "created_at": datetime.now(timezone.utc).isoformat(),
        "kind": "feedback",
        "schema_version": SCHEMA_VERSION,
        "dataset_uid": uid,
        "job_id": job_id,
        "shard": SHARD_NAME,
        "sha256": sha256,
        "counts": counts.as_dict(),
        "feedback_id_range": [counts.min_feedback_id, counts.max_feedback_id],
        "policy": config.policy(),
    }


def _prefix_of(store: ObjectStore, dataset: str) -> str:
    """Accept a prefix (`datasets/<uid>`), its manifest key, or a full URI inside this store."""
    if "://" in dataset:
        root = store.url.rstrip("/") + "/"
        if not dataset.startswith(root):
            raise PermanentError(f"dataset {dataset!r} is not in the configured object store {store.url!r}")
        dataset = dataset[len(root) :]
    dataset = dataset.strip("/")
    if dataset.endswith("/" + MANIFEST):
        dataset = dataset[: -len(MANIFEST) - 1]
    return dataset


def read_dataset_manifest(store: ObjectStore, dataset: str) -> dict[str, Any]:
    """The manifest of a complete dataset (a crashed upload has none: ObjectNotFound)."""
    prefix = _prefix_of(store, dataset)
    try:
        return json.loads(store.get_bytes(join(prefix, MANIFEST)))
    except ObjectNotFound:
        raise ObjectNotFound(f"no complete dataset at {prefix!r} (manifest missing): export it again") from None


def iter_dataset_rows(
    store: ObjectStore, dataset: str, split: str | tuple[str, ...] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream a dataset's rows back (constant memory), optionally only one split or a tuple of splits
    (training reads `TAUGHT_SPLITS`; replay reads only "train"; retention reads "probe").

    The shard's sha256 is checked against the manifest as the stream ends; a mismatch raises
    PermanentError after the last row (a replay reading a corrupt shard fails instead of going on).
    """
    wanted = (split,) if isinstance(split, str) else split
    if wanted is not None and (not wanted or any(s not in SPLITS for s in wanted)):
        raise PermanentError(f"split must be one of {SPLITS}, a tuple of them, or None; got {split!r}")
    prefix = _prefix_of(store, dataset)
    manifest = read_dataset_manifest(store, prefix)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise PermanentError(
            f"dataset {prefix!r} has schema version {manifest.get('schema_version')}, this code reads {SCHEMA_VERSION}"
        )
    expected = manifest["files"][manifest["shard"]]["sha256"]
    with store.open_read(join(prefix, manifest["shard"])) as raw:
        hashing = _HashingReader(raw)
        with gzip.GzipFile(fileobj=hashing, mode="rb") as text:
            for line in text:
                row = json.loads(line)
                if wanted is None or row["split"] in wanted:
                    yield row
        while hashing.read(1 << 20):  # hash any bytes gzip did not need (there should be none)
            pass
    if hashing.sha256.hexdigest() != expected:
        raise PermanentError(f"dataset {prefix!r}: shard does not match its manifest sha256 (corrupt upload?)")


class _HashingReader(io.RawIOBase):
    def __init__(self, src: BinaryIO):
        self._src = src
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._src.read(len(buffer))
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        self.sha256.update(data)
        return data


def publish_rows(store: ObjectStore, prefix: str, rows: Sequence[dict[str, Any]], kind: str,
                 manifest_extra: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """Publish a small dataset built in memory (an online version's facts, a document's chunks) in the
    shard format, manifest last. Each row already names its split. Returns (sha256, rows per split)."""
    import tempfile
    from pathlib import Path

    from common.objectstore.artifacts import publish_artifact

    counts = {split: sum(1 for r in rows if r["split"] == split) for split in SPLITS}
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / SHARD_NAME
        with gzip.GzipFile(shard, "wb", mtime=0) as out:  # mtime=0: the same rows give the same bytes
            for row in rows:
                out.write((json.dumps(row, ensure_ascii=True) + "\n").encode())
        sha256 = hashlib.sha256(shard.read_bytes()).hexdigest()
        publish_artifact(store, prefix, {SHARD_NAME: shard}, {
            "kind": kind, "schema_version": SCHEMA_VERSION, "shard": SHARD_NAME, "sha256": sha256,
            "feedback_id_range": [None, None], **manifest_extra, "counts": {**counts, **manifest_extra.get("counts", {})},
        })
    return sha256, counts
