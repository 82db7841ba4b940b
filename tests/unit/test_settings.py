"""Settings: `CONTINUUM_*` environment, clear errors, and distributed mode refusing unsafe secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import FeedbackPolicy, Mode, Settings, load_settings

STRONG = "a-strong-unguessable-secret-31337"
SAFE_DISTRIBUTED = {
    "CONTINUUM_MODE": "distributed",
    "CONTINUUM_DATABASE_URL": f"postgresql+psycopg://continuum:{STRONG}@db.internal:5432/continuum",
    "CONTINUUM_BROKER_URL": f"redis://:{STRONG}@redis.internal:6379/0",
    "CONTINUUM_STORAGE_URL": "s3://continuum-artifacts/prod",
    "CONTINUUM_S3_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "CONTINUUM_S3_SECRET_ACCESS_KEY": STRONG,
}


@pytest.fixture
def env(monkeypatch):
    """Set environment variables for one test (the autouse fixture already cleared CONTINUUM_*)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)

    def set_env(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_embedded_defaults_live_under_home(tmp_path):
    settings = load_settings().check()
    home = (tmp_path / "home").resolve()  # CONTINUUM_HOME from the autouse fixture
    assert settings.mode is Mode.embedded
    assert settings.resolved_database_url == f"sqlite:///{home / 'continuum.db'}"
    assert settings.resolved_storage_url == f"file://{home / 'objects'}"
    assert settings.resolved_broker_url == f"sqla+sqlite:///{home / 'broker.db'}"


def test_environment_prefix_sets_fields(env):
    env(
        {
            "CONTINUUM_FEEDBACK_MAX_CHARS": "123",
            "CONTINUUM_THUMBS_DOWN_POLICY": "unlikelihood",
            "CONTINUUM_STORAGE_URL": "s3://bucket/prefix",
            "CONTINUUM_DATABASE_URL": "sqlite:////tmp/x.db",
            "FEEDBACK_MAX_CHARS": "999",  # without the prefix: ignored
        }
    )
    settings = load_settings()
    assert settings.feedback_max_chars == 123
    assert settings.thumbs_down_policy is FeedbackPolicy.unlikelihood
    assert settings.resolved_storage_url == "s3://bucket/prefix"
    assert settings.resolved_database_url == "sqlite:////tmp/x.db"


def test_explicit_overrides_win_over_environment(env):
    env({"CONTINUUM_EXPORT_MIN_ROWS": "5"})
    assert load_settings(export_min_rows=7).export_min_rows == 7


def test_misspelt_override_is_an_error_not_silently_ignored():
    with pytest.raises(ConfigError, match="databse_url"):
        load_settings(databse_url="sqlite://")


def test_bad_values_give_one_config_error_naming_each_variable(env):
    env(
        {
            "CONTINUUM_MODE": "cluster",
            "CONTINUUM_FEEDBACK_MAX_CHARS": "lots",
            "CONTINUUM_HOLDOUT_PERCENT": "90",
            "CONTINUUM_STORAGE_URL": "ftp://host/x",
        }
    )
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    for name in ("CONTINUUM_MODE", "CONTINUUM_FEEDBACK_MAX_CHARS", "CONTINUUM_HOLDOUT_PERCENT", "CONTINUUM_STORAGE_URL"):
        assert name in message
    assert "file:// or s3://" in message


@pytest.mark.parametrize(
    ("frequencies", "tiers", "fragments"),
    [("4,2", "3", ["strictly ascending", "tiers is 3 but 2"]), ("0,1", "0", ["whole numbers >= 1"]),
     ("fast", "0", ["preset (conservative, balanced, aggressive)"]), ("1,2,4,8,16", "0", ["2 to 4 tiers"])],
)
def test_nested_tier_settings_are_checked_when_settings_load(env, frequencies, tiers, fragments):
    env({"CONTINUUM_NESTED_FREQUENCIES": frequencies, "CONTINUUM_NESTED_TIERS": tiers})
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "CONTINUUM_NESTED_FREQUENCIES" in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_good_nested_tier_settings_load(env):
    env({"CONTINUUM_NESTED_FREQUENCIES": "1, 3, 9", "CONTINUUM_NESTED_TIERS": "3"})
    assert load_settings().nested_frequencies == "1, 3, 9"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("s3://", "bucket"), ("s3:///prefix-only", "bucket"), ("file://", "folder"), ("gs://b/p", "s3://")],
)
def test_storage_url_shapes_are_checked(value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(storage_url=value)


def test_unparseable_database_url_is_a_config_error():
    with pytest.raises(ConfigError, match="CONTINUUM_DATABASE_URL.*SQLAlchemy URL"):
        load_settings(database_url="not a url")


def test_embedded_mode_accepts_defaults_and_known_default_secrets(env):
    env(
        {
            "CONTINUUM_STORAGE_URL": "s3://bucket/p",
            "CONTINUUM_S3_SECRET_ACCESS_KEY": "minioadmin",
            "CONTINUUM_DATABASE_URL": "postgresql+psycopg://postgres:postgres@localhost/db",
        }
    )
    settings = load_settings()
    assert settings.check() is settings


def test_distributed_mode_with_strong_secrets_passes(env):
    env(SAFE_DISTRIBUTED)
    settings = load_settings()
    assert settings.mode is Mode.distributed
    assert settings.check() is settings


def test_distributed_mode_lists_every_problem_in_one_message(env):
    env({"CONTINUUM_MODE": "distributed"})
    with pytest.raises(ConfigError) as info:
        load_settings().check()
    message = str(info.value)
    assert "\n" not in message
    assert "3 problem(s)" in message
    assert "CONTINUUM_DATABASE_URL" in message
    assert "CONTINUUM_BROKER_URL" in message
    assert "CONTINUUM_STORAGE_URL" in message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"CONTINUUM_DATABASE_URL": "postgresql+psycopg://continuum@db/c"}, "database password"),
        ({"CONTINUUM_DATABASE_URL": "postgresql+psycopg://continuum:postgres@db/c"}, "database password"),
        ({"CONTINUUM_DATABASE_URL": "postgresql+psycopg://continuum:ChangeMe@db/c"}, "database password"),
        ({"CONTINUUM_DATABASE_URL": "sqlite:////srv/continuum.db"}, "Postgres"),
        ({"CONTINUUM_BROKER_URL": "redis://:password@redis.internal:6379/0"}, "Redis password"),
        ({"CONTINUUM_BROKER_URL": "redis://redis.internal:6379/0"}, "Redis password"),
        ({"CONTINUUM_BROKER_URL": "redis://127.0.0.1:6379/0"}, "Redis password"),
        ({"CONTINUUM_S3_SECRET_ACCESS_KEY": "minioadmin"}, "S3 secret key"),
        ({"CONTINUUM_S3_SECRET_ACCESS_KEY": ""}, "S3 secret key"),
        ({"CONTINUUM_S3_ACCESS_KEY_ID": ""}, "CONTINUUM_S3_ACCESS_KEY_ID"),
    ],
)
def test_distributed_mode_refuses_each_missing_or_default_secret(env, overrides, fragment):
    env({**SAFE_DISTRIBUTED, **overrides})
    with pytest.raises(ConfigError, match=fragment) as info:
        load_settings().check()
    assert "1 problem(s)" in str(info.value)


def test_s3_credentials_fall_back_to_standard_aws_variables(env):
    env(
        {
            **SAFE_DISTRIBUTED,
            "CONTINUUM_S3_ACCESS_KEY_ID": "",
            "CONTINUUM_S3_SECRET_ACCESS_KEY": "",
            "AWS_ACCESS_KEY_ID": "AKIAFROMAWS",
            "AWS_SECRET_ACCESS_KEY": STRONG,
            "AWS_DEFAULT_REGION": "eu-central-1",
        }
    )
    settings = load_settings().check()
    assert settings.s3_credentials() == ("AKIAFROMAWS", STRONG)
    assert settings.s3_region_name() == "eu-central-1"


def test_continuum_s3_variables_win_over_aws_ones(env):
    env({"CONTINUUM_S3_ACCESS_KEY_ID": "mine", "CONTINUUM_S3_SECRET_ACCESS_KEY": "mine-secret"})
    env({"AWS_ACCESS_KEY_ID": "aws", "AWS_SECRET_ACCESS_KEY": "aws-secret", "CONTINUUM_S3_REGION": "ap-south-1"})
    settings = load_settings()
    assert settings.s3_credentials() == ("mine", "mine-secret")
    assert settings.s3_region_name() == "ap-south-1"


def test_flower_auth_is_required_outside_embedded_mode(env):
    env(SAFE_DISTRIBUTED)
    with pytest.raises(ConfigError, match="CONTINUUM_FLOWER_BASIC_AUTH"):
        load_settings().check_flower_auth()
    with pytest.raises(ConfigError, match="CONTINUUM_FLOWER_BASIC_AUTH"):
        load_settings(flower_basic_auth="admin:admin").check_flower_auth()
    assert load_settings(flower_basic_auth=f"ops:{STRONG}").check_flower_auth() == f"ops:{STRONG}"


def test_secrets_never_appear_in_repr(env):
    env(SAFE_DISTRIBUTED)
    text = repr(load_settings())
    assert STRONG not in text


def test_every_setting_has_help_text():
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_home_is_a_path(env, tmp_path):
    env({"CONTINUUM_HOME": str(tmp_path / "elsewhere")})
    assert load_settings().home == Path(tmp_path / "elsewhere")


def test_bad_fact_patterns_fail_at_settings_load(monkeypatch):
    from common.errors import ConfigError
    from common.settings import load_settings

    monkeypatch.setenv("CONTINUUM_ONLINE_FACT_PATTERNS", '[{"relation": "x", "pattern": "no groups"}]')
    with pytest.raises(ConfigError, match="named group"):
        load_settings()


def test_document_settings_are_checked_in_one_line(env):
    env({"CONTINUUM_DOCUMENTS_VIEWS": "names, questions"})
    assert load_settings().documents_views == "names,questions"
    env({"CONTINUUM_DOCUMENTS_VIEWS": "names,summaries"})
    with pytest.raises(ConfigError, match=r"unknown view\(s\) \['summaries'\]"):
        load_settings()
    env({"CONTINUUM_DOCUMENTS_VIEWS": "", "CONTINUUM_DOCUMENTS_STRATEGY": "lorra"})
    with pytest.raises(ConfigError, match="DOCUMENTS_STRATEGY"):
        load_settings()
