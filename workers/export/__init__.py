"""The `export` job: unexported feedback → one dataset shard (gzip JSONL + manifest) and a `datasets` row.

`config` holds the validated arguments, `logic` the claim/publish transaction, `shard` the file format
and the reader the learning engine's replay uses. The Celery task wrapping `export_feedback` is thin.
"""

from workers.export.config import ExportConfig
from workers.export.logic import ExportResult, dataset_prefix, dataset_uid, export_feedback
from workers.export.shard import (
    SCHEMA_VERSION,
    SHARD_NAME,
    SPLITS,
    TAUGHT_SPLITS,
    iter_dataset_rows,
    prompt_bucket,
    read_dataset_manifest,
    split_of,
)

__all__ = [
    "SCHEMA_VERSION",
    "SHARD_NAME",
    "SPLITS",
    "TAUGHT_SPLITS",
    "ExportConfig",
    "ExportResult",
    "dataset_prefix",
    "dataset_uid",
    "export_feedback",
    "iter_dataset_rows",
    "prompt_bucket",
    "read_dataset_manifest",
    "split_of",
]
