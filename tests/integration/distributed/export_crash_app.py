"""A worker app that freezes the export job at one crash point, so a test can `kill -9` it right there.

`CONTINUUM_TEST_EXPORT_CRASH_AT` names the point; on reaching it the worker writes the file named by
`CONTINUUM_TEST_EXPORT_CRASH_MARKER` and blocks forever (the test then SIGKILLs it). The hooks watch
the real statements, store calls and ledger calls of the production code path, and only pause there:

- `before_claim`: the `UPDATE feedback SET dataset_id …` claim is about to run (pending dataset
  row inserted, claim transaction open);
- `after_shard`: the claim is committed and the shard fully uploaded, the manifest not yet written;
- `after_manifest`: the manifest is written, the finalising transaction is about to run;
- `after_commit`: the export's finalising transaction (dataset ready + job succeeded, fenced) committed;
  the worker is about to call the ledger's plain `succeed` (which then finds the job already done).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import Engine, event

from common.ledger import JobLedger
from common.objectstore.s3 import S3ObjectStore
from common.settings import load_settings
from workers.celery_app import make_celery

CRASH_AT = os.environ.get("CONTINUUM_TEST_EXPORT_CRASH_AT", "")
MARKER = os.environ.get("CONTINUUM_TEST_EXPORT_CRASH_MARKER", "")
POINTS = ("before_claim", "after_shard", "after_manifest", "after_commit")
if CRASH_AT and CRASH_AT not in POINTS:
    raise SystemExit(f"CONTINUUM_TEST_EXPORT_CRASH_AT must be one of {POINTS}, got {CRASH_AT!r}")


def _freeze(point: str) -> None:
    if point != CRASH_AT:
        return
    Path(MARKER).write_text(point)
    while True:  # hold every lock and connection exactly as they are until SIGKILL
        time.sleep(60)


@event.listens_for(Engine, "before_cursor_execute")
def _watch_statements(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
    text = " ".join(statement.split()).upper()
    if "UPDATE FEEDBACK SET DATASET_ID" in text:  # Postgres wraps the claim in a WITH (it counts the rows)
        _freeze("before_claim")
    elif text.startswith("UPDATE DATASETS SET") and " STATE=" in text.replace(" = ", "="):
        _freeze("after_manifest")  # the finalising UPDATE (it marks the dataset ready)


_succeed = JobLedger.succeed


def _succeed_watched(self, *args, **kwargs):
    _freeze("after_commit")  # the export's own transaction has committed; the ledger is not told yet
    return _succeed(self, *args, **kwargs)


JobLedger.succeed = _succeed_watched

_put_bytes = S3ObjectStore.put_bytes


def _put_bytes_watched(self, key: str, data: bytes) -> None:
    if key.startswith("datasets/") and key.endswith("/manifest.json"):
        _freeze("after_shard")
    _put_bytes(self, key, data)


S3ObjectStore.put_bytes = _put_bytes_watched

app = make_celery(load_settings().check())
