"""Enqueue-time parameter checks on SQLite: what does not exist is refused with the fix."""

from __future__ import annotations

import pytest

from common.db import create_db_engine, session_factory, session_scope
from common.db.models import Dataset
from common.errors import NotFound, ValidationError
from common.orchestration.preflight import check_job_params


@pytest.fixture
def sessions(migrated_sqlite_url):
    engine = create_db_engine(migrated_sqlite_url)
    yield session_factory(engine)
    engine.dispose()


def _dataset(sessions, state: str) -> int:
    with session_scope(sessions) as session:
        row = Dataset(uid=f"u-{state}", kind="feedback", uri="", manifest_key="m", num_rows=1, num_train=1,
                      num_holdout=0, num_duplicates=0, num_skipped=0, sha256="", schema_version=1, policy={},
                      state=state)
        session.add(row)
        session.flush()
        return row.id


def test_train_needs_a_ready_dataset_and_a_known_recipe(sessions):
    ready, pending = _dataset(sessions, "ready"), _dataset(sessions, "pending")
    check_job_params(sessions, "train", {"dataset_id": ready, "recipe": "ewc_lora"})
    with pytest.raises(NotFound, match="dataset 999 does not exist: list them with `continuum datasets list`"):
        check_job_params(sessions, "train", {"dataset_id": 999})
    with pytest.raises(ValidationError, match="still being exported"):
        check_job_params(sessions, "train", {"dataset_id": pending})
    with pytest.raises(ValidationError, match="unknown recipe 'ewc'"):
        check_job_params(sessions, "train", {"dataset_id": ready, "recipe": "ewc"})
    with pytest.raises(ValidationError, match="`dataset_id` is required"):
        check_job_params(sessions, "train", {})
    with pytest.raises(ValidationError, match="integer id"):
        check_job_params(sessions, "train", {"dataset_id": "1"})
    with pytest.raises(NotFound, match="adapter 5 does not exist"):
        check_job_params(sessions, "train", {"dataset_id": ready, "parent_adapter_id": 5})
    check_job_params(sessions, "noop", {"anything": 1})  # kinds without references pass
