"""Issue 9 hardening of settings: every broker scheme's secret, known defaults, a minimum length,
embedded-only backends refused in distributed mode, Flower on loopback, an absolute home."""

from __future__ import annotations

import os

import pytest

from common.errors import ConfigError
from common.settings import MIN_SECRET_LENGTH, load_settings

STRONG = "a-strong-unguessable-secret-31337"
SAFE = dict(
    mode="distributed",
    database_url=f"postgresql+psycopg://continuum:{STRONG}@db.internal:5432/continuum",
    broker_url=f"redis://:{STRONG}@redis.internal:6379/0",
    storage_url="s3://continuum-artifacts/prod",
    s3_access_key_id="AKIAEXAMPLEKEY",
    s3_secret_access_key=STRONG,
)


def _check(**overrides):
    return load_settings(**{**SAFE, **overrides}).check()


def test_safe_distributed_settings_pass():
    assert _check().broker_url.startswith("redis://")


@pytest.mark.parametrize("broker", [
    f"amqps://user:{STRONG}@mq.internal:5671//",
    f"rediss://:{STRONG}@redis.internal:6380/0",
    f"sentinel://:{STRONG}@s1:26379;sentinel://:{STRONG}@s2:26379",
])
def test_strong_passwords_pass_on_every_scheme(broker):
    assert _check(broker_url=broker)


@pytest.mark.parametrize("broker, why", [
    ("amqp://guest:guest@mq.internal:5672//", "RabbitMQ password .* known default"),
    ("amqps://user:changeme@mq.internal:5671//", "known default"),
    ("pyamqp://user@mq.internal//", "missing"),
    ("sentinel://:changeme@s1:26379", "Redis password .* known default"),
    (f"sentinel://:{STRONG}@s1:26379;sentinel://:guest@s2:26379", "known default"),
    ("redis://:x@redis.internal:6379/0", f"shorter than {MIN_SECRET_LENGTH}"),
    ("rediss://:Password@redis.internal:6379/0", "known default"),
    ("sqla+sqlite:////tmp/broker.db", "embedded-only"),
    ("memory://", "embedded-only"),
    ("kafka://:x@k:9092", "not a supported broker"),
])
def test_weak_or_embedded_brokers_are_refused(broker, why):
    with pytest.raises(ConfigError, match=why):
        _check(broker_url=broker)


@pytest.mark.parametrize("overrides, why", [
    ({"storage_url": "file:///srv/continuum"}, "local folder"),
    ({"database_url": "sqlite:////srv/continuum.db"}, "SQLite"),
    ({"database_url": "postgresql+psycopg://u:short@db/c"}, "shorter than"),
    ({"s3_secret_access_key": "minioadmin"}, "S3 secret key .* known default"),
    ({"s3_secret_access_key": "abc123"}, "S3 secret key .* shorter than"),
])
def test_embedded_backends_and_short_secrets_are_refused(overrides, why):
    with pytest.raises(ConfigError, match=why):
        _check(**overrides)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError, match=r"3 problem\(s\)"):
        _check(broker_url="amqp://guest:guest@mq//", storage_url="file:///x",
               database_url="postgresql+psycopg://u:short@db/c")


@pytest.mark.parametrize("auth", ["admin:admin", "admin:guest", "admin:short", "admin:"])
def test_flower_refuses_weak_passwords_in_distributed_mode(auth):
    with pytest.raises(ConfigError, match="CONTINUUM_FLOWER_BASIC_AUTH"):
        _check(flower_basic_auth=auth).check_flower_auth()


def test_flower_binds_loopback_by_default():
    assert load_settings().flower_address == "127.0.0.1"
    assert load_settings(flower_address="0.0.0.0").flower_address == "0.0.0.0"


def test_home_is_made_absolute_once_where_settings_are_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(home=".continuum")
    assert settings.home == tmp_path / ".continuum" and settings.home.is_absolute()
    monkeypatch.chdir(os.sep)  # a later chdir does not move it
    assert settings.home == tmp_path / ".continuum"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / '.continuum' / 'continuum.db'}"
