"""Celery app settings, queue routing by live workers, and the worker's queue/pool plan."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.db import create_db_engine, session_factory, session_scope
from common.db.models import Worker
from common.errors import ConfigError, ValidationError
from common.ledger import utc_now
from common.settings import load_settings
from scheduler.cli.worker import plan_worker
from scheduler.producer import choose_queue
from workers.celery_app import make_celery
from workers.kinds import KINDS, job_kind


def test_app_is_json_only_acks_late_and_names_every_task():
    settings = load_settings(broker_url="redis://:s3cret-pass@127.0.0.1:6379/0")
    app = make_celery(settings)
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events and conf.task_send_sent_event
    longest = max(settings.job_soft_time_limits.values()) + settings.job_hard_time_limit_grace_seconds
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["visibility_timeout"] == settings.broker_visibility_timeout_seconds > longest
    assert {q.name for q in conf.task_queues} == {"io", "cpu", "cuda", "mps", "online"}
    names = {"continuum.export", "continuum.fisher", "continuum.train", "continuum.evaluate", "continuum.promote",
             "continuum.reap", "continuum.pipeline_tick", "continuum.sleep", "continuum.noop"}
    assert names <= set(app.tasks)
    assert conf.task_routes["continuum.export"]["queue"] == "io"
    assert conf.task_routes["continuum.train"]["queue"] == "cpu"
    assert conf.task_routes["continuum.online"]["queue"] == "online"
    train = app.tasks["continuum.train"]
    assert train.soft_time_limit > settings.job_soft_time_limits["train"] and train.time_limit > train.soft_time_limit


def test_visibility_timeout_shorter_than_a_job_is_refused():
    settings = load_settings(broker_visibility_timeout_seconds=600)
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
        make_celery(settings)


@pytest.fixture
def sessions(migrated_sqlite_url):
    engine = create_db_engine(migrated_sqlite_url)
    yield session_factory(engine)
    engine.dispose()


def _worker(sessions, name, queues, age_seconds=0):
    with session_scope(sessions) as session:
        session.add(Worker(name=name, hostname="h", device=queues[0], queues=queues,
                           heartbeat_at=utc_now() - timedelta(seconds=age_seconds)))


def test_auto_routes_ml_jobs_to_the_best_live_device(sessions):
    settings = load_settings(worker_live_seconds=60)
    train = job_kind("train")
    assert choose_queue(settings, sessions, train) == "cpu"  # nobody live: cpu fallback
    _worker(sessions, "mac", ["mps", "io"])
    assert choose_queue(settings, sessions, train) == "mps"
    _worker(sessions, "old-gpu", ["cuda"], age_seconds=600)  # stale heartbeat: not live
    assert choose_queue(settings, sessions, train) == "mps"
    _worker(sessions, "gpu", ["cuda", "io"])
    assert choose_queue(settings, sessions, train) == "cuda"
    assert choose_queue(settings, sessions, train, device="cpu") == "cpu"  # overridable
    assert choose_queue(settings, sessions, job_kind("export")) == "io"  # light jobs: always io
    with pytest.raises(ValidationError):
        choose_queue(settings, sessions, train, device="tpu")


def test_worker_plan_queues_and_pool():
    assert plan_worker("cuda", None, None) == (["cuda", "io"], "solo", 1)
    assert plan_worker("mps", None, 4) == (["mps", "io"], "solo", 1)
    assert plan_worker("cpu", "io", 3) == (["io"], "prefork", 3)
    assert plan_worker("cuda", "cuda,cpu", None) == (["cuda", "cpu"], "solo", 1)


def test_every_kind_has_an_explicit_task_name():
    assert all(kind.task_name == f"continuum.{name}" for name, kind in KINDS.items())
