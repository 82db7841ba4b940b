"""The pipeline state machine, the reconciliation sweep and bounded re-sends, on SQLite.

The sender is `RecordingSender`, the in-repo `JobSender` that keeps messages in a list (what the
Celery sender would publish); the ledger and database are real.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from common.db import create_db_engine, session_factory
from common.db.engine import session_scope
from common.db.models import Job, PipelineRun
from common.errors import ValidationError
from common.ledger import JobLedger, utc_now
from common.orchestration import Orchestrator
from common.orchestration import pipeline as machine
from common.orchestration.reaper import reap_and_resend
from common.orchestration.reconcile import reconcile_pipelines
from common.settings import load_settings


class RecordingSender:
    """A JobSender that records (job_id, kind, queue) instead of publishing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, job_id: str, kind: str, queue: str) -> None:
        self.sent.append((job_id, kind, queue))


@pytest.fixture
def orch(migrated_sqlite_url, tmp_path):
    engine = create_db_engine(migrated_sqlite_url)
    sessions = session_factory(engine)
    settings = load_settings(home=tmp_path, database_url=migrated_sqlite_url, queued_max_resends=2)
    ledger = JobLedger(sessions)
    yield Orchestrator(settings=settings, sessions=sessions, ledger=ledger, sender=RecordingSender())
    ledger.close()
    engine.dispose()


def _run(orch, run_id):
    with session_scope(orch.sessions) as session:
        return session.get(PipelineRun, run_id)


def _insert_bare_run(orch, step="export", age_seconds=0.0) -> str:
    """A run row with no step job: what a crash between the insert and the first enqueue leaves."""
    with session_scope(orch.sessions) as session:
        session.execute(machine._insert_run(session, dict(
            id="run-1", idempotency_key="manual:run-1", state="running", current_step=step, params={},
            created_at=utc_now() - timedelta(seconds=age_seconds),
        )))
    return "run-1"


def _finish(orch, job_id, state="succeeded", result=None):
    claim = orch.ledger.claim(job_id, "w", 30)
    assert claim.ok
    if state == "failed":
        orch.ledger.fail(job_id, "w", "boom", retryable=False)
    else:
        assert orch.ledger.succeed(job_id, "w", result or {})


def test_a_run_whose_first_step_was_never_sent_is_enqueued_after_the_grace(orch):
    run_id = _insert_bare_run(orch)
    assert reconcile_pipelines(orch, grace_seconds=60).enqueued == []  # inside the grace: maybe in flight
    later = utc_now() + timedelta(seconds=61)
    assert reconcile_pipelines(orch, grace_seconds=60, now=later).enqueued == [run_id]
    [(job_id, kind, queue)] = orch.sender.sent
    assert (kind, queue) == ("export", "io")
    assert orch.ledger.get(job_id).pipeline_run_id == run_id
    # Idempotent: a second sweep (or a second beat) finds the job and sends nothing more.
    assert reconcile_pipelines(orch, grace_seconds=60, now=later).enqueued == []
    assert len(orch.sender.sent) == 1


def test_a_cancelled_queued_step_ends_the_run_cancelled(orch):
    run, _ = machine.start_pipeline(orch)
    [(job_id, _, _)] = orch.sender.sent
    assert orch.ledger.request_cancel(job_id).value == "cancelled"  # nobody tells the run
    assert _run(orch, run.id).state == "running"
    assert reconcile_pipelines(orch).advanced == [run.id]
    ended = _run(orch, run.id)
    assert ended.state == "cancelled" and ended.error.startswith("export:")


def test_a_failed_step_ends_the_run_failed(orch):
    run, _ = machine.start_pipeline(orch)
    _finish(orch, orch.sender.sent[0][0], "failed")
    reconcile_pipelines(orch)
    assert _run(orch, run.id).state == "failed"


def test_a_step_moved_on_but_never_enqueued_is_enqueued_by_the_sweep(orch):
    run, _ = machine.start_pipeline(orch)
    _finish(orch, orch.sender.sent[0][0], result={"dataset_id": 7})
    # What a crash between the compare-and-set and the enqueue leaves: current_step moved, no job.
    with session_scope(orch.sessions) as session:
        session.execute(update(PipelineRun).where(PipelineRun.id == run.id).values(current_step="fisher"))
    assert reconcile_pipelines(orch, grace_seconds=60).enqueued == []
    result = reconcile_pipelines(orch, grace_seconds=60, now=utc_now() + timedelta(seconds=61))
    assert result.enqueued == [run.id]
    assert [kind for _, kind, _ in orch.sender.sent] == ["export", "fisher"]


def test_a_finished_step_whose_advance_was_lost_is_advanced(orch):
    run, _ = machine.start_pipeline(orch)
    _finish(orch, orch.sender.sent[0][0], result={"dataset_id": 7})  # no advance_pipeline call
    assert reconcile_pipelines(orch).advanced == [run.id]
    assert _run(orch, run.id).current_step == "fisher"
    assert [kind for _, kind, _ in orch.sender.sent] == ["export", "fisher"]


def test_cancel_ends_the_run_and_cancels_its_live_step(orch):
    run, _ = machine.start_pipeline(orch)
    job_id = orch.sender.sent[0][0]
    result = machine.cancel_pipeline(orch, run.id)
    assert result == {"state": "cancelled", "job_id": job_id, "job_state": "cancelled"}
    assert _run(orch, run.id).state == "cancelled"
    assert orch.ledger.get(job_id).state == "cancelled"
    with pytest.raises(ValidationError, match="only a running run can be cancelled"):
        machine.cancel_pipeline(orch, run.id)


def test_cancel_of_a_running_step_asks_it_to_stop_and_a_late_success_does_not_move_the_run(orch):
    run, _ = machine.start_pipeline(orch)
    job_id = orch.sender.sent[0][0]
    assert orch.ledger.claim(job_id, "w", 30).ok
    assert machine.cancel_pipeline(orch, run.id)["job_state"] == "running"
    assert orch.ledger.heartbeat(job_id, "w", 30).cancel_requested
    orch.ledger.succeed(job_id, "w", {"dataset_id": 1})
    assert machine.advance_pipeline(orch, run.id) == "cancelled"
    assert [kind for _, kind, _ in orch.sender.sent] == ["export"]


def test_resume_moves_a_stalled_running_run_on_and_refuses_a_live_one(orch):
    run_id = _insert_bare_run(orch)
    job_id = machine.resume_pipeline(orch, run_id)
    assert orch.ledger.get(job_id).kind == "export"
    with pytest.raises(ValidationError, match="is running: its export job .* is queued"):
        machine.resume_pipeline(orch, run_id)


def test_resume_of_a_failed_run_retries_its_step(orch):
    run, _ = machine.start_pipeline(orch)
    first = orch.sender.sent[0][0]
    _finish(orch, first, "failed")
    machine.advance_pipeline(orch, run.id)
    again = machine.resume_pipeline(orch, run.id)
    assert again != first and _run(orch, run.id).state == "running"


def _age_queued(orch, job_id, seconds=3600):
    with session_scope(orch.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=utc_now() - timedelta(seconds=seconds)))


def test_resends_are_bounded_then_the_job_fails_naming_its_queue(orch):
    job, _ = orch.ledger.create("sleep", queue="cuda")
    for expected in (1, 2):
        _age_queued(orch, job.id)
        assert reap_and_resend(orch)["resent"] == [job.id]
        with session_scope(orch.sessions) as session:
            row = session.get(Job, job.id)
            assert row.send_count == expected and row.last_sent_at is not None
    _age_queued(orch, job.id)
    result = reap_and_resend(orch)
    assert result["resent"] == [] and result["dead"] == [job.id]
    failed = orch.ledger.get(job.id)
    assert failed.state == "failed" and "'cuda'" in failed.error and "continuum worker -Q cuda" in failed.error
    assert len(orch.sender.sent) == 2


def test_a_given_up_step_ends_its_pipeline(orch):
    run, _ = machine.start_pipeline(orch)
    job_id = orch.sender.sent[0][0]
    for _ in range(3):
        _age_queued(orch, job_id)
        reap_and_resend(orch)
    assert orch.ledger.get(job_id).state == "failed"
    assert _run(orch, run.id).state == "failed"


