"""Job ledger state machine on SQLite: claims, leases, attempts, cancel, the reaper."""

from __future__ import annotations

import time

import pytest

from common.db import create_db_engine, session_factory
from common.db.models import JobState
from common.errors import ValidationError
from common.ledger import ClaimOutcome, JobLedger


@pytest.fixture
def ledger(migrated_sqlite_url) -> JobLedger:
    engine = create_db_engine(migrated_sqlite_url)
    yield JobLedger(session_factory(engine))
    engine.dispose()


def test_create_is_idempotent_by_key(ledger):
    first, created = ledger.create("sleep", {"steps": 1}, queue="cpu", idempotency_key="k1")
    again, created_again = ledger.create("sleep", {"steps": 99}, queue="cpu", idempotency_key="k1")
    assert created and not created_again
    assert again.id == first.id and again.params == {"steps": 1}
    assert ledger.counts_by_state() == {"queued": 1}


def test_same_key_for_another_kind_is_refused(ledger):
    ledger.create("sleep", queue="cpu", idempotency_key="k")
    with pytest.raises(ValidationError, match="already names"):
        ledger.create("noop", queue="io", idempotency_key="k")


def test_claim_once_then_duplicates_do_nothing(ledger):
    job, _ = ledger.create("sleep", queue="cpu")
    first = ledger.claim(job.id, "w1", lease_seconds=30)
    assert first.ok and first.job.attempts == 1 and first.job.lease_owner == "w1"
    second = ledger.claim(job.id, "w2", lease_seconds=30)
    assert second.outcome is ClaimOutcome.busy
    assert ledger.get(job.id).lease_owner == "w1" and ledger.get(job.id).attempts == 1
    assert ledger.succeed(job.id, "w1", {"answer": 42})
    assert ledger.claim(job.id, "w2", 30).outcome is ClaimOutcome.finished
    done = ledger.get(job.id)
    assert done.state == "succeeded" and done.result == {"answer": 42} and done.attempts == 1


def test_a_claim_by_a_task_of_another_kind_or_queue_is_refused_and_changes_nothing(ledger):
    job, _ = ledger.create("sleep", queue="cpu")
    before = ledger.get(job.id)
    for kind, queue in (("export", None), ("sleep", "io"), ("export", "cpu")):
        claim = ledger.claim(job.id, "w1", lease_seconds=30, kind=kind, queue=queue)
        assert claim.outcome is ClaimOutcome.refused
        after = ledger.get(job.id)
        assert (after.state, after.attempts, after.lease_token, after.lease_owner) == (
            before.state, before.attempts, before.lease_token, before.lease_owner)
    assert ledger.claim(job.id, "w1", lease_seconds=30, kind="sleep", queue="cpu").ok


def test_expired_lease_can_be_taken_over_and_old_owner_is_locked_out(ledger):
    """Lease times are the database's: real (short) leases, real sleeps."""
    job, _ = ledger.create("sleep", queue="cpu")
    first = ledger.claim(job.id, "w1", 0.8)
    assert first.ok and first.token == 1
    time.sleep(0.4)
    assert ledger.heartbeat(job.id, "w1", 0.8).lease_held  # extends to now+0.8
    time.sleep(0.5)
    assert ledger.claim(job.id, "w2", 10).outcome is ClaimOutcome.busy  # heartbeat kept it alive
    time.sleep(0.5)
    takeover = ledger.claim(job.id, "w2", 10)
    assert takeover.ok and takeover.job.attempts == 2 and takeover.token == 2
    # The old owner lost the lease: it can neither heartbeat nor record a result.
    assert not ledger.heartbeat(job.id, "w1", 10).lease_held
    assert not ledger.succeed(job.id, "w1", {"stale": True})
    assert ledger.succeed(job.id, "w2", {"fresh": True})
    assert ledger.get(job.id).result == {"fresh": True}


def test_retryable_failures_requeue_until_attempts_run_out(ledger):
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=2)
    assert ledger.claim(job.id, "w", 30).ok
    assert ledger.fail(job.id, "w", "boom 1", retryable=True) is JobState.queued
    assert ledger.claim(job.id, "w", 30).ok
    assert ledger.fail(job.id, "w", "boom 2", retryable=True) is JobState.failed
    dead = ledger.get(job.id)
    assert dead.attempts == 2 and "gave up after 2 attempts" in dead.error and "boom 2" in dead.error
    assert ledger.claim(job.id, "w", 30).outcome is ClaimOutcome.finished


def test_permanent_failure_does_not_retry(ledger):
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=5)
    ledger.claim(job.id, "w", 30)
    assert ledger.fail(job.id, "w", "bad input", retryable=False) is JobState.failed
    assert ledger.get(job.id).error == "bad input"


def test_crash_redeliveries_stop_at_the_attempt_cap(ledger):
    """A worker dying mid-job (lease expires) each time: the last redelivery dead-letters it."""
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=2)
    for owner in ("w1", "w2"):
        assert ledger.claim(job.id, owner, -1).ok  # a lease that has already run out: the worker died
    refused = ledger.claim(job.id, "w3", 10)
    assert refused.outcome is ClaimOutcome.exhausted
    assert refused.job.state == "failed" and "gave up after 2 attempts" in refused.job.error
    assert ledger.claim(job.id, "w4", 10).outcome is ClaimOutcome.finished


def test_release_gives_the_attempt_back(ledger):
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=1)
    for _ in range(3):  # preempted three times, still claimable: a clean hand-back is not a failure
        assert ledger.claim(job.id, "w", 30).ok
        assert ledger.release(job.id, "w", "worker shutting down")
    assert ledger.get(job.id).state == "queued" and ledger.get(job.id).attempts == 0


def test_cancel_queued_and_running(ledger):
    queued, _ = ledger.create("sleep", queue="cpu")
    assert ledger.request_cancel(queued.id) is JobState.cancelled
    assert ledger.claim(queued.id, "w", 30).outcome is ClaimOutcome.finished

    running, _ = ledger.create("sleep", queue="cpu")
    ledger.claim(running.id, "w", 30)
    assert ledger.request_cancel(running.id) is JobState.running
    beat = ledger.heartbeat(running.id, "w", 30, progress={"step": 3, "total": 10})
    assert beat.lease_held and beat.cancel_requested
    assert ledger.mark_cancelled(running.id, "w")
    job = ledger.get(running.id)
    assert job.state == "cancelled" and job.progress == {"step": 3, "total": 10}


def test_reaper_requeues_expired_fails_exhausted_and_resends_stale(ledger):
    live, _ = ledger.create("sleep", queue="cpu")
    lost, _ = ledger.create("sleep", queue="cpu", max_attempts=3)
    last_try, _ = ledger.create("sleep", queue="cpu", max_attempts=1)
    stale, _ = ledger.create("sleep", queue="cpu")
    for job in (live, lost, last_try):
        ledger.claim(job.id, "w", -1)  # leases that already ran out
    time.sleep(0.3)
    # A late heartbeat still renews a lease nobody took over: exclusivity was never broken.
    assert ledger.heartbeat(live.id, "w", 10).lease_held
    result = ledger.reap(resend_after_seconds=0.2)
    assert result.requeued == [lost.id]
    assert ledger.get(live.id).state == "running"
    assert result.dead == [last_try.id]
    assert result.resend == [stale.id]
    assert ledger.get(lost.id).state == "queued" and ledger.get(lost.id).lease_owner is None
    assert ledger.get(last_try.id).state == "failed"
    # A second reaper right after finds nothing to do: every move was conditional.
    again = ledger.reap(resend_after_seconds=0.2)
    assert again.requeued == [] and again.dead == [] and again.resend == []


def test_retry_puts_a_dead_job_back(ledger):
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=1)
    ledger.claim(job.id, "w", 30)
    ledger.fail(job.id, "w", "flaky", retryable=True)
    assert ledger.get(job.id).state == "failed"
    retried = ledger.retry(job.id)
    assert retried.state == "queued" and retried.max_attempts == 2
    assert retried.error is None  # a queued job does not show why it failed last time
    assert ledger.claim(job.id, "w", 30).ok
    with pytest.raises(ValidationError):
        ledger.retry(job.id)


def test_a_unique_id_prefix_names_its_job_and_an_ambiguous_one_lists_the_matches(ledger):
    from common.errors import NotFound

    first, _ = ledger.create("sleep", queue="cpu", job_id="abcd1234-0000")
    ledger.create("sleep", queue="cpu", job_id="abcd9999-0000")
    assert ledger.resolve("abcd1") == first.id == ledger.resolve(first.id)
    with pytest.raises(ValidationError, match="matches abcd1234-0000, abcd9999-0000: give more"):
        ledger.resolve("abcd")
    with pytest.raises(ValidationError, match="too short"):
        ledger.resolve("ab")
    with pytest.raises(NotFound, match="continuum jobs list"):
        ledger.resolve("ffff")
    with pytest.raises(NotFound):  # LIKE wildcards in the input are literal characters
        ledger.resolve("abc%")
