"""Fencing, database-clock and race cases, run on SQLite (tests/unit/ledger/test_fencing.py) and on
Postgres (tests/integration/distributed/test_ledger_postgres.py) with the same bodies."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from common.db.engine import session_scope
from common.db.models import Dataset, JobState
from common.ledger import CancelledAtFinish, ClaimOutcome, JobLedger, LeaseLost


def _register(ledger: JobLedger, job_id: str, owner: str, token: int, uid: str) -> None:
    """An artifact row + the fenced finish, in one transaction: what every job's final write does."""
    with session_scope(ledger._sessions) as session:
        session.add(Dataset(uid=uid, uri="u", manifest_key="m", num_rows=1, num_train=1, num_holdout=0,
                            sha256="x", schema_version=1, policy={}, job_id=job_id))
        session.flush()
        ledger.fenced_finish(session, job_id, owner, token, {"uid": uid})


def _datasets(ledger: JobLedger) -> list[str]:
    with session_scope(ledger._sessions) as session:
        return list(session.scalars(select(Dataset.uid)))


def token_bumps_on_every_claim(ledger: JobLedger) -> None:
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=1)
    tokens = []
    for owner in ("a", "b", "c"):
        claim = ledger.claim(job.id, owner, 30)
        tokens.append(claim.token)
        assert ledger.release(job.id, owner, "preempted")  # gives the attempt back: attempts stays 0/1
    assert tokens == [1, 2, 3], "the attempt number repeats after a hand-back; the token must not"


def stale_token_registers_nothing(ledger: JobLedger) -> None:
    job, _ = ledger.create("sleep", queue="cpu")
    stale = ledger.claim(job.id, "stale", -1)  # its lease ran out (worker stalled)
    fresh = ledger.claim(job.id, "fresh", 30)
    assert fresh.ok and fresh.token == stale.token + 1
    with pytest.raises(LeaseLost):
        _register(ledger, job.id, "stale", stale.token, "from-stale")
    assert _datasets(ledger) == [], "the stale attempt's artifact row must roll back with its refused finish"
    _register(ledger, job.id, "fresh", fresh.token, "from-fresh")
    done = ledger.get(job.id)
    assert done.state == "succeeded" and done.result == {"uid": "from-fresh"} and _datasets(ledger) == ["from-fresh"]
    assert ledger.finished_with(job.id, fresh.token) is JobState.succeeded
    assert ledger.finished_with(job.id, stale.token) is None


def expired_lease_registers_nothing_even_unclaimed(ledger: JobLedger) -> None:
    """Nobody took the job over yet, but our lease ran out on the database's clock: refused."""
    job, _ = ledger.create("sleep", queue="cpu")
    claim = ledger.claim(job.id, "w", 0.3)
    time.sleep(0.5)
    with pytest.raises(LeaseLost):
        _register(ledger, job.id, "w", claim.token, "late")
    assert _datasets(ledger) == [] and ledger.get(job.id).state == "running"
    assert not ledger.succeed(job.id, "w", {"late": True}), "the plain finish is lease-checked too"


def cancel_before_final_write_is_cancelled(ledger: JobLedger) -> None:
    job, _ = ledger.create("sleep", queue="cpu")
    claim = ledger.claim(job.id, "w", 30)
    ledger.request_cancel(job.id)
    with pytest.raises(CancelledAtFinish):
        _register(ledger, job.id, "w", claim.token, "cancelled")
    assert _datasets(ledger) == []
    assert ledger.mark_cancelled(job.id, "w") and ledger.get(job.id).state == "cancelled"


def skewed_clock_steals_no_live_lease(ledger_factory) -> None:
    """A reaper or worker whose clock runs 5 minutes ahead: the database's clock decides."""
    honest: JobLedger = ledger_factory(None)
    skewed: JobLedger = ledger_factory(lambda: datetime.now(timezone.utc) + timedelta(minutes=5))
    job, _ = honest.create("sleep", queue="cpu")
    assert honest.claim(job.id, "live", 60).ok
    assert skewed.reap(resend_after_seconds=3600).requeued == []
    assert skewed.claim(job.id, "thief", 60).outcome is ClaimOutcome.busy
    assert skewed.heartbeat(job.id, "live", 60).lease_held
    running = honest.get(job.id)
    assert running.state == "running" and running.lease_owner == "live" and running.lease_token == 1


def duplicate_racing_a_hand_back_never_dead_letters(ledger: JobLedger, monkeypatch) -> None:
    """The duplicate's claim meets a live lease; before it explains the refusal the holder hands the
    job back. The old code read `queued` and concluded "out of attempts"."""
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=3)
    holder = ledger.claim(job.id, "holder", 30)
    assert holder.ok
    real = ledger._explain_refusal
    fired = []

    def hand_back_first(*args, **kwargs):
        if not fired:
            fired.append(True)
            assert ledger.release(job.id, "holder", "worker shutting down")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "_explain_refusal", hand_back_first)
    duplicate = ledger.claim(job.id, "duplicate", 30)
    after = ledger.get(job.id)
    assert fired and after.state != "failed", f"a job with attempts left was dead-lettered: {after.error}"
    assert duplicate.outcome in (ClaimOutcome.claimed, ClaimOutcome.busy)


def poison_hand_backs_are_dead_lettered(ledger: JobLedger) -> None:
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=3)
    # Progress resets the count: a long job preempted often is not poison.
    for _ in range(ledger.max_releases + 2):
        assert ledger.claim(job.id, "w", 30).ok
        assert ledger.release(job.id, "w", "preempted", made_progress=True)
    for n in range(1, ledger.max_releases + 1):
        assert ledger.claim(job.id, "w", 30).ok
        back = ledger.release(job.id, "w", "soft time limit", made_progress=False)
        assert back == (n < ledger.max_releases)
    dead = ledger.get(job.id)
    assert dead.state == "failed" and "without progress" in dead.error and dead.releases == ledger.max_releases
    assert ledger.claim(job.id, "w", 30).outcome is ClaimOutcome.finished


def no_two_claims_share_a_token(ledger: JobLedger) -> None:
    job, _ = ledger.create("sleep", queue="cpu", max_attempts=50)
    seen = set()
    for i in range(6):
        claim = ledger.claim(job.id, f"w{i}", -1)  # each expires at once: the next claim takes over
        assert claim.ok and claim.token not in seen
        seen.add(claim.token)
    with session_scope(ledger._sessions) as session:
        from common.db.models import Job

        assert session.scalar(select(func.max(Job.lease_token))) == 6


def heartbeat_after_our_own_final_write_is_not_a_lost_lease(ledger: JobLedger) -> None:
    """The job process finished the job (fenced) a moment before its supervisor's next heartbeat: the
    supervisor must not take that for a lost lease (it would kill the process and log `lease_lost`)."""
    job, _ = ledger.create("sleep", queue="cpu")
    claim = ledger.claim(job.id, "w", 30)
    _register(ledger, job.id, "w", claim.token, "ours")
    beat = ledger.heartbeat(job.id, "w", 30, token=claim.token)
    assert beat.lease_held and beat.finished and not beat.cancel_requested
    other, _ = ledger.create("sleep", queue="cpu")
    stale = ledger.claim(other.id, "old", -1)
    assert ledger.claim(other.id, "new", 30).ok
    assert not ledger.heartbeat(other.id, "old", 30, token=stale.token).lease_held
