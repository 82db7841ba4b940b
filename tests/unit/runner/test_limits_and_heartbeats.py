"""The runners' limits and lease handling, on embedded SQLite with real job processes where a process
is involved: heartbeat errors are tolerated until the lease would expire; inline jobs get soft/hard
time limits; a cancel requested before an inline job's final write ends it `cancelled`."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from common.db import create_db_engine, session_factory
from common.db.engine import session_scope
from common.db.models import Dataset
from common.ledger import Heartbeat, JobLedger
from workers.context import JobContext, JobInterrupted
from workers.runner.inline_runner import run_inline
from workers.runner.outcome import OutcomeKind, Supervision


@pytest.fixture
def home(tmp_path, monkeypatch, migrated_sqlite_url):
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONTINUUM_DATABASE_URL", migrated_sqlite_url)
    monkeypatch.setenv("CONTINUUM_STORAGE_URL", f"file://{tmp_path / 'objects'}")
    from common.settings import load_settings

    return load_settings()


@pytest.fixture
def ledger(migrated_sqlite_url):
    engine = create_db_engine(migrated_sqlite_url)
    yield JobLedger(session_factory(engine))
    engine.dispose()


def _supervision(heartbeat, *, soft=60.0, hard=120.0, lease=5.0, beat=0.1, owner="w", token=None) -> Supervision:
    return Supervision(heartbeat=heartbeat, publish_progress=lambda _p: None, shutting_down=lambda: False,
                       heartbeat_seconds=beat, soft_time_limit=soft, hard_time_limit=hard, stop_grace_seconds=2,
                       lease_owner=owner, lease_token=token, lease_seconds=lease)


class FlakyHeartbeat:
    """Raises (a database blip) for the first `failures` calls, then holds the lease."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def __call__(self, _progress) -> Heartbeat:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("server closed the connection unexpectedly")
        return Heartbeat(lease_held=True, cancel_requested=False)


def _context(settings, job_ledger, job_id, **kw) -> JobContext:
    return JobContext(settings=settings, sessions=job_ledger._sessions, store=None, job_id=job_id, **kw)


# ---------------------------------------------------------------- a job in its own process


def _sleep_job(ledger, steps: int, step_seconds: float):
    job, _ = ledger.create("sleep", {"steps": steps, "step_seconds": step_seconds}, queue="cpu")
    claim = ledger.claim(job.id, "w", 60)
    return job.id, claim.token


def test_heartbeat_errors_within_the_lease_do_not_kill_the_job_process(home, ledger):
    from workers.runner.subprocess_runner import run_in_subprocess

    job_id, token = _sleep_job(ledger, steps=6, step_seconds=0.25)
    beat = FlakyHeartbeat(failures=5)  # ~0.5 s of errors; the lease is 5 s
    outcome = run_in_subprocess(job_id, _supervision(beat, owner="w", token=token))
    assert outcome.kind is OutcomeKind.succeeded, outcome.error
    assert beat.calls > 5


def test_heartbeat_errors_past_the_lease_give_the_job_up(home, ledger):
    from workers.runner.subprocess_runner import run_in_subprocess

    job_id, token = _sleep_job(ledger, steps=200, step_seconds=0.25)
    started = time.monotonic()
    outcome = run_in_subprocess(job_id, _supervision(FlakyHeartbeat(failures=10**6), lease=1.5, owner="w",
                                                     token=token))
    assert outcome.kind is OutcomeKind.lease_lost and "not renewed" in outcome.error
    assert time.monotonic() - started < 15


# ---------------------------------------------------------------- inline jobs


def test_inline_soft_limit_asks_the_job_to_hand_back(home, ledger):
    def polite(ctx: JobContext):
        while not ctx.should_stop():
            time.sleep(0.02)
        raise JobInterrupted(ctx.stop_reason())

    outcome = run_inline(_context(home, ledger, "j"), polite, _supervision(FlakyHeartbeat(0), soft=0.3, hard=30))
    assert outcome.kind is OutcomeKind.requeue


def test_inline_hard_limit_stops_a_job_that_ignores_every_stop(home, ledger):
    def stubborn(_ctx: JobContext):
        deadline = time.monotonic() + 8  # bounded, so a missing hard limit fails instead of hanging
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return {"ran": "to the end"}

    started = time.monotonic()
    outcome = run_inline(_context(home, ledger, "j"), stubborn, _supervision(FlakyHeartbeat(0), soft=0.2, hard=0.6))
    assert outcome.kind is OutcomeKind.failed and "hard time limit" in outcome.error
    assert time.monotonic() - started < 5


def test_inline_job_cancelled_before_its_final_write_is_cancelled_and_writes_nothing(home, ledger):
    job, _ = ledger.create("export", queue="io")
    claim = ledger.claim(job.id, "w", 60)

    def deaf_export(ctx: JobContext):  # never looks at should_stop(), like a short export
        ledger.request_cancel(job.id)
        with session_scope(ctx.sessions) as session:
            session.add(Dataset(uid="u", uri="x", manifest_key="m", num_rows=1, num_train=1, num_holdout=0,
                                sha256="s", schema_version=1, policy={}, job_id=job.id))
            session.flush()
            ctx.finish(session, {"status": "exported"})
        return {"status": "exported"}

    ctx = _context(home, ledger, job.id, lease_owner="w", lease_token=claim.token, ledger=ledger)
    outcome = run_inline(ctx, deaf_export, _supervision(lambda _p: ledger.heartbeat(job.id, "w", 60), owner="w",
                                                        token=claim.token))
    assert outcome.kind is OutcomeKind.cancelled
    with session_scope(ledger._sessions) as session:
        assert list(session.scalars(select(Dataset))) == []


def test_inline_heartbeat_errors_within_the_lease_are_tolerated(home, ledger):
    def short(ctx: JobContext):
        time.sleep(0.8)
        return {"ok": True}

    outcome = run_inline(_context(home, ledger, "j"), short, _supervision(FlakyHeartbeat(3), beat=0.1, lease=5))
    assert outcome.kind is OutcomeKind.succeeded
