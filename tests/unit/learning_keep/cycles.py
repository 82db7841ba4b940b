"""Real `train`/`fisher` jobs on the built-in tiny model through the embedded ledger (SQLite + a local
object store): datasets are published as export shards, adapters come from the real train job."""

from __future__ import annotations

import gzip
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.db import create_db_engine, session_factory
from common.db.engine import session_scope
from common.db.models import Adapter, Dataset
from common.objectstore import ObjectStore, open_store
from common.objectstore.artifacts import publish_artifact
from common.settings import Settings, load_settings
from workers.context import JobContext

# One short epoch, a small adapter: seconds per job on the tiny model.
FAST_TRAIN = {"epochs": 1, "batch_size": 8, "checkpoint_every": 1000, "warmup_steps": 0}
SMALL_LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@dataclass
class Cycles:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    tmp: Path
    engine: Any = None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def context(self, params: dict[str, Any], **overrides: Any) -> JobContext:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return JobContext(settings=settings, sessions=self.sessions, store=self.store, job_id=str(uuid.uuid4()),
                          params=params)

    def dataset(self, name: str, splits: dict[str, int]) -> int:
        """Publish an export-shaped dataset (`splits`: rows per split) and register its row; returns its id."""
        from workers.export.shard import SCHEMA_VERSION

        records = [{"prompt": f"What is {name} fact {split} {i}?", "response": f"{name}-{split}-{i}",
                    "messages": None, "weight": 1.0, "feedback": "thumbs_up", "unlikelihood": False, "split": split}
                   for split, n in splits.items() for i in range(n)]
        prefix = f"datasets/{name}"
        shard = self.tmp / f"{name}.jsonl.gz"
        shard.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
        publish_artifact(self.store, prefix, {"shard.jsonl.gz": shard},
                         {"schema_version": SCHEMA_VERSION, "shard": "shard.jsonl.gz"})
        with session_scope(self.sessions) as session:
            row = Dataset(uid=name, uri=f"{self.store.url}/{prefix}", manifest_key=f"{prefix}/manifest.json",
                          num_rows=len(records), num_train=splits.get("train", 0), num_holdout=splits.get("holdout", 0),
                          sha256="", schema_version=SCHEMA_VERSION, policy={})
            session.add(row)
            session.flush()
            return row.id

    def train(self, dataset_id: int, **params: Any) -> dict[str, Any]:
        from workers.train.logic import run

        overrides = params.pop("settings", {})
        job = {"dataset_id": dataset_id, "train": dict(FAST_TRAIN), "lora": dict(SMALL_LORA), **params}
        return run(self.context(job, **overrides))

    def adapter(self, adapter_id: int) -> Adapter:
        with session_scope(self.sessions) as session:
            return session.get(Adapter, adapter_id)


def make_cycles(tmp_path: Path, database_url: str, **settings: Any) -> Cycles:
    values = {"home": tmp_path / "home", "database_url": database_url,
              "storage_url": f"file://{tmp_path / 'objects'}", "recipe": "naive", "base_model": "", **settings}
    resolved = load_settings(**values)
    engine = create_db_engine(database_url)
    return Cycles(resolved, session_factory(engine), open_store(resolved), tmp_path, engine)
