"""Promote moves the alias and sets the adapter's status in ONE transaction fenced on the job's lease:
a stale promote attempt moves nothing, and a live one changes both together."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from common.db import create_db_engine, session_factory
from common.db.engine import session_scope
from common.db.models import Adapter, AliasHistory
from common.ledger import JobLedger, LeaseLost
from common.settings import Settings
from workers.context import JobContext
from workers.promote.aliases import read_alias
from workers.promote.logic import run as promote


@pytest.fixture
def ledger(migrated_sqlite_url):
    engine = create_db_engine(migrated_sqlite_url)
    yield JobLedger(session_factory(engine))
    engine.dispose()


def _adapter(ledger: JobLedger) -> int:
    with session_scope(ledger._sessions) as session:
        row = Adapter(name="default", version=1, lineage=[1], base_model="tiny", uri="x", status="candidate",
                      dataset_ids=[], metadata_={})
        session.add(row)
        session.flush()
        return row.id


def _ctx(tmp_path, ledger, job_id, owner, token, adapter_id) -> JobContext:
    return JobContext(settings=Settings(home=tmp_path / "home"), sessions=ledger._sessions, store=None,
                      job_id=job_id, params={"adapter_id": adapter_id, "force": True},
                      lease_owner=owner, lease_token=token, ledger=ledger)


def test_stale_promote_moves_no_alias_and_sets_no_status(tmp_path, ledger):
    adapter_id = _adapter(ledger)
    job, _ = ledger.create("promote", queue="io")
    stale = ledger.claim(job.id, "stale", -1)  # its worker stalled; the lease ran out
    assert ledger.claim(job.id, "fresh", 60).ok  # another attempt holds the job now
    with pytest.raises(LeaseLost):
        promote(_ctx(tmp_path, ledger, job.id, "stale", stale.token, adapter_id))
    assert read_alias(ledger._sessions, "production").adapter_id is None
    with session_scope(ledger._sessions) as session:
        assert session.get(Adapter, adapter_id).status == "candidate"
        assert list(session.scalars(select(AliasHistory).where(AliasHistory.succeeded.is_(True)))) == []


def test_live_promote_moves_alias_and_status_together(tmp_path, ledger):
    adapter_id = _adapter(ledger)
    job, _ = ledger.create("promote", queue="io")
    claim = ledger.claim(job.id, "w", 60)
    result = promote(_ctx(tmp_path, ledger, job.id, "w", claim.token, adapter_id))
    assert result["status"] == "promoted" and read_alias(ledger._sessions, "production").adapter_id == adapter_id
    with session_scope(ledger._sessions) as session:
        assert session.get(Adapter, adapter_id).status == "promoted"
