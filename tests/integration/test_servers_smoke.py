"""The real servers the integration tests rely on start and answer."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration


def test_postgres_accepts_queries(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 40 + 2")).scalar() == 42
    engine.dispose()


def test_redis_roundtrip(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()


def test_s3_server_roundtrip(s3_server, s3_bucket):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a/b", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b")["Body"].read() == b"hello"
