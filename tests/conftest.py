"""Session-wide real servers and per-test isolation.

Postgres, Redis and the S3-compatible server start once per session (lazily: a unit-test run starts
none); each test gets its own database / bucket / Redis db so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest

from tests.support.servers import PostgresServer, RedisServer, S3Server

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty Postgres database for this test."""
    return postgres_server.create_database(f"t{next(_counter)}_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def migrated_postgres_url(postgres_url) -> str:
    from common.db.migrate import upgrade

    upgrade(postgres_url)
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'continuum.db'}"


@pytest.fixture
def migrated_sqlite_url(sqlite_url) -> str:
    from common.db.migrate import upgrade

    upgrade(sqlite_url)
    return sqlite_url


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket for this test."""
    return s3_server.create_bucket(f"t{next(_counter)}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def s3_env(s3_server, s3_bucket, monkeypatch) -> dict[str, str]:
    """CONTINUUM_* settings pointing at this test's bucket on the loopback S3 server."""
    env = {
        "CONTINUUM_STORAGE_URL": f"s3://{s3_bucket}/continuum",
        "CONTINUUM_S3_ENDPOINT_URL": s3_server.endpoint,
        "CONTINUUM_S3_REGION": s3_server.region,
        "CONTINUUM_S3_ACCESS_KEY_ID": s3_server.access_key,
        "CONTINUUM_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def redis_url(redis_server) -> str:
    """A Redis URL on a database number no other test in this session uses (0-15 cycle, flushed)."""
    import redis

    db = next(_counter) % 16
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=db, password=redis_server.password)
    client.flushdb()
    client.close()
    return f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/{db}"


@pytest.fixture(autouse=True)
def _isolated_continuum_env(monkeypatch, tmp_path):
    """No test reads the developer's CONTINUUM_* environment or writes to ./.continuum."""
    import os

    for key in list(os.environ):
        if key.startswith("CONTINUUM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
