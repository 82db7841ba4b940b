"""The ledger on a real Postgres: racing claims and racing producers each get exactly one winner."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.db import create_db_engine, session_factory
from common.ledger import ClaimOutcome, JobLedger

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(migrated_postgres_url):
    engine = create_db_engine(migrated_postgres_url, pool_size=16)
    ledger = JobLedger(session_factory(engine))
    yield ledger
    ledger.close()
    engine.dispose()


def _race(n: int, fn):
    barrier = threading.Barrier(n)

    def run(i: int):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_claims_exactly_one_wins(ledger):
    for _ in range(5):
        job, _ = ledger.create("sleep", queue="cpu")
        outcomes = _race(12, lambda i: ledger.claim(job.id, f"w{i}", 30).outcome)
        assert outcomes.count(ClaimOutcome.claimed) == 1
        assert outcomes.count(ClaimOutcome.busy) == 11
        assert ledger.get(job.id).attempts == 1


def test_concurrent_creates_with_one_key_make_one_row(ledger):
    results = _race(12, lambda i: ledger.create("sleep", {"i": i}, queue="cpu", idempotency_key="tick-1"))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert ledger.counts_by_state() == {"queued": 1}


def test_concurrent_reapers_requeue_each_expired_job_once(ledger):
    jobs = [ledger.create("sleep", queue="cpu")[0] for _ in range(10)]
    for job in jobs:
        assert ledger.claim(job.id, "dead-worker", lease_seconds=-1).ok  # already expired
    results = _race(6, lambda i: ledger.reap(resend_after_seconds=3600))
    requeued = [job_id for r in results for job_id in r.requeued]
    assert sorted(requeued) == sorted(job.id for job in jobs)
    assert ledger.counts_by_state() == {"queued": 10}
