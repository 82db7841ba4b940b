"""Pipeline runs and beat with real servers and real worker / beat processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from common.db.engine import session_scope
from common.db.models import Feedback, Job, PipelineRun
from scheduler.beat import Beat, ScheduleEntry, latest_tick
from scheduler.pipeline import pipeline_status, resume_pipeline, start_pipeline
from tests.integration.distributed.harness import REPO, wait_for
from workers.celery_app import app_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _feedback(dist_settings, resources, n: int) -> None:
    from common.feedback.importer import record_feedback_rows

    rows = [{"prompt": f"What is the code word {i}?", "response": f"word-{i}", "feedback": "thumbs_up", "id": f"f{i}"}
            for i in range(n)]
    assert record_feedback_rows(resources.sessions, dist_settings, rows).inserted == n


def _wait_done(settings, run_id, timeout=90):
    return wait_for(lambda: (s := pipeline_status(settings, run_id))["state"] != "running" and s, timeout,
                    f"pipeline run {run_id} to finish")


def test_too_few_samples_ends_skipped_without_training(dist_settings, resources, start_worker):
    start_worker("pipe")
    _feedback(dist_settings, resources, 3)  # pipeline_min_samples defaults to 8
    run, created = start_pipeline(dist_settings, app_for(dist_settings))
    status = _wait_done(dist_settings, run.id)
    assert created and status["state"] == "skipped" and "export skipped" in status["error"]
    assert list(status["steps"]) == ["export"]  # nothing after export was enqueued
    with session_scope(resources.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        # The rows stay unclaimed for the next run.
        assert session.scalar(select(func.count()).where(Feedback.dataset_id.is_(None))) == 3


def test_failed_run_resumes_from_its_failed_step(dist_settings, resources, start_worker):
    start_worker("pipe")
    _feedback(dist_settings, resources, 10)
    params = {"device": "cpu", "steps": {"train": {"dataset_id": 987654}}}  # a dataset that does not exist
    run, _ = start_pipeline(dist_settings, app_for(dist_settings), params=params)
    failed = _wait_done(dist_settings, run.id, timeout=120)
    assert failed["state"] == "failed" and failed["current_step"] == "train" and "987654" in failed["error"]
    assert failed["steps"]["export"]["state"] == "succeeded"
    assert failed["steps"]["fisher"]["state"] == "skipped"  # first cycle: no adapter to protect yet
    export_job = failed["steps"]["export"]["job_id"]
    # Resume with the step still broken in another way: only `train` runs again, export is reused.
    new_job = resume_pipeline(dist_settings, run.id, {"dataset_id": 876543})
    again = _wait_done(dist_settings, run.id, timeout=120)
    assert again["state"] == "failed" and "876543" in again["error"]
    assert again["steps"]["train"]["job_id"] == new_job and again["steps"]["export"]["job_id"] == export_job
    with session_scope(resources.sessions) as session:
        kinds = sorted(session.scalars(select(Job.kind).where(Job.pipeline_run_id == run.id)))
    assert kinds == ["export", "fisher", "train", "train"]


def test_two_beats_for_several_ticks_make_one_run_per_tick(dist_settings, resources, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUUM_PIPELINE_SCHEDULE", "@every 2s")
    monkeypatch.setenv("CONTINUUM_REAPER_INTERVAL_SECONDS", "1")
    logs = [tmp_path / f"beat{i}.log" for i in range(2)]
    handles = [open(log, "wb") for log in logs]
    beats = [subprocess.Popen([sys.executable, "-c", "from scheduler.cli import main; main()", "beat"], cwd=REPO,
                              env=dict(os.environ), stdout=fh, stderr=subprocess.STDOUT) for fh in handles]
    try:
        wait_for(lambda: _runs(resources) >= 4, 60, "four scheduled runs")
    finally:
        for beat in beats:
            beat.send_signal(signal.SIGTERM)
        for beat in beats:
            beat.wait(20)
        for fh in handles:
            fh.close()
    with session_scope(resources.sessions) as session:
        runs = session.execute(select(PipelineRun.schedule, PipelineRun.tick, PipelineRun.idempotency_key)).all()
        jobs = session.scalars(select(Job.idempotency_key).where(Job.kind == "export")).all()
    ticks = [tick for _, tick, _ in runs]
    assert len(ticks) == len(set(ticks)) >= 4  # one run per tick…
    assert {schedule for schedule, _, _ in runs} == {"weekly"}
    assert all(t.timestamp() % 2 == 0 for t in ticks)  # …on the schedule's own tick boundaries
    assert len(jobs) == len(runs)  # one first-step job per run, no duplicates
    text = "".join(log.read_text() for log in logs)
    # Both beats saw the ticks: for some tick the second one found the run already there.
    assert text.count("started a pipeline run") + text.count("already started by another beat") >= 2 * 4 - 2
    assert "already started by another beat" in text


def _runs(resources) -> int:
    with session_scope(resources.sessions) as session:
        return session.scalar(select(func.count()).select_from(PipelineRun))


def test_beat_schedule_is_plain_data_with_catch_up():
    now = datetime(2026, 11, 23, 2, 30, tzinfo=timezone.utc)  # a Monday, 30 minutes after the tick
    assert latest_tick("0 2 * * 1", now) == datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
    assert latest_tick("0 2 * * 1", now - timedelta(hours=1)) == datetime(2026, 11, 16, 2, 0, tzinfo=timezone.utc)
    fired: list[datetime] = []
    clock = [now]
    beat = Beat([ScheduleEntry("weekly", "0 2 * * 1")], fire=lambda e, t: fired.append(t) or True,
                reap=lambda: None, reaper_interval=60, clock=lambda: clock[0])
    beat.tick_once()
    assert fired == [datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)]  # missed 30 min ago: caught up
    clock[0] = now + timedelta(days=6)
    beat.tick_once()
    assert len(fired) == 1  # nothing new before next Monday
    clock[0] = now + timedelta(days=7)
    beat.tick_once()
    assert fired[-1] == datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)
