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


# ---- fencing, the database clock and the hand-back race, on Postgres (bodies shared with SQLite)

from tests.unit.ledger import fencing_cases as cases  # noqa: E402


def test_token_bumps_on_every_claim(ledger):
    cases.token_bumps_on_every_claim(ledger)


def test_no_two_claims_share_a_token(ledger):
    cases.no_two_claims_share_a_token(ledger)


def test_stale_token_registers_nothing(ledger):
    cases.stale_token_registers_nothing(ledger)


def test_expired_lease_registers_nothing_even_unclaimed(ledger):
    cases.expired_lease_registers_nothing_even_unclaimed(ledger)


def test_cancel_before_final_write_is_cancelled(ledger):
    cases.cancel_before_final_write_is_cancelled(ledger)


def test_skewed_clock_steals_no_live_lease(ledger):
    sessions = ledger._sessions
    made = []

    def factory(clock):
        made.append(JobLedger(sessions) if clock is None else JobLedger(sessions, clock=clock))
        return made[-1]

    try:
        cases.skewed_clock_steals_no_live_lease(factory)
    finally:
        for extra in made:
            extra.close()


def test_duplicate_racing_a_hand_back_never_dead_letters(ledger, monkeypatch):
    cases.duplicate_racing_a_hand_back_never_dead_letters(ledger, monkeypatch)


def test_poison_hand_backs_are_dead_lettered(ledger):
    cases.poison_hand_backs_are_dead_lettered(ledger)


def test_duplicates_hammering_a_job_that_keeps_being_handed_back_never_dead_letter_it(ledger):
    """Real threads: one holder claims and hands back (with progress) over and over while duplicate
    deliveries keep claiming. Whatever interleaving happens, the job is never `failed`."""
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=2)
    stop = threading.Event()
    outcomes: list[ClaimOutcome] = []

    def duplicates(i: int) -> None:
        while not stop.is_set():
            claim = ledger.claim(job.id, f"dup{i}", 30)
            outcomes.append(claim.outcome)
            if claim.ok:  # a duplicate won a free slot: it hands back too, like a holder would
                ledger.release(job.id, f"dup{i}", "duplicate", made_progress=True)

    threads = [threading.Thread(target=duplicates, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(60):
            claim = ledger.claim(job.id, f"holder{n}", 30)
            if claim.ok:
                ledger.release(job.id, f"holder{n}", "preempted", made_progress=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    final = ledger.get(job.id)
    assert ClaimOutcome.exhausted not in outcomes, final.error
    assert final.state in ("queued", "running"), f"dead-lettered with attempts left: {final.error}"


def test_heartbeat_after_our_own_final_write_is_not_a_lost_lease(ledger):
    cases.heartbeat_after_our_own_final_write_is_not_a_lost_lease(ledger)
