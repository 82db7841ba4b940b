"""A distributed stack per test: real Postgres database, Redis db, S3 bucket; worker processes on demand."""

from __future__ import annotations

import pytest

from tests.integration.distributed.harness import FAST_ENV, WorkerProcess


@pytest.fixture
def dist_settings(migrated_postgres_url, redis_url, s3_env, monkeypatch):
    monkeypatch.setenv("CONTINUUM_MODE", "distributed")
    monkeypatch.setenv("CONTINUUM_DATABASE_URL", migrated_postgres_url)
    monkeypatch.setenv("CONTINUUM_BROKER_URL", redis_url)
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    from common.settings import load_settings

    return load_settings().check()


@pytest.fixture
def resources(dist_settings):
    from workers.resources import resources_for

    found = resources_for(dist_settings)
    yield found
    found.close()


@pytest.fixture
def start_worker(tmp_path, resources):
    started: list[WorkerProcess] = []

    def start(name: str, queues: str = "cpu,io", app_module: str | None = None, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(f"{name}@test", tmp_path / f"{name}.log", queues=queues, app_module=app_module).start()
        started.append(worker)
        if wait:
            worker.wait_registered(resources.sessions)
        return worker

    yield start
    for worker in started:
        worker.stop()
