"""The one settings object: `CONTINUUM_*` environment variables, built at the entry point, passed down.

Nothing here connects to anything; it only describes where things are. `Settings.check()` refuses
unsafe combinations (a default or missing secret outside embedded mode) with one message listing every
problem.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError

# Secrets that ship in examples and docs. Outside embedded mode they are as good as no secret.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"", "changeme", "change-me", "minioadmin", "continuum", "postgres", "password", "secret", "admin", "test"}
)


class Mode(str, Enum):
    embedded = "embedded"
    distributed = "distributed"


class FeedbackPolicy(str, Enum):
    """What a thumbs-down row becomes in a training set."""

    skip = "skip"
    downweight = "downweight"
    unlikelihood = "unlikelihood"


class Settings(BaseSettings):
    """All of continuum's configuration. Every field maps to `CONTINUUM_<FIELD>` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="CONTINUUM_", extra="ignore", validate_default=True)

    mode: Mode = Field(Mode.embedded, description="`embedded` (one machine, no servers) or `distributed`.")
    home: Path = Field(Path(".continuum"), description="Folder for embedded-mode state (SQLite, objects, broker).")
    database_url: str = Field(
        "", description="SQLAlchemy URL of the source-of-truth database; empty = SQLite file under `home`."
    )
    storage_url: str = Field(
        "", description="`file://PATH` or `s3://bucket/prefix`; empty = `file://<home>/objects`."
    )
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO); empty = AWS default.")
    s3_region: str = Field("", description="S3 region; empty = AWS_DEFAULT_REGION or us-east-1.")
    s3_access_key_id: SecretStr = Field(SecretStr(""), description="S3 access key; empty = AWS_ACCESS_KEY_ID.")
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="S3 secret key; empty = AWS_SECRET_ACCESS_KEY."
    )
    broker_url: str = Field(
        "", description="Celery broker URL (`redis://…`); empty = the embedded SQLite broker under `home`."
    )
    flower_basic_auth: SecretStr = Field(
        SecretStr(""), description="`user:password` for Flower; required outside embedded mode."
    )

    # Feedback and export.
    feedback_max_chars: int = Field(32_000, gt=0, description="Largest prompt or response accepted, in characters.")
    thumbs_up_weight: float = Field(2.0, gt=0, description="Training weight of a thumbs-up sample.")
    thumbs_down_policy: FeedbackPolicy = Field(
        FeedbackPolicy.downweight, description="Thumbs-down rows: `skip`, `downweight` or `unlikelihood`."
    )
    thumbs_down_weight: float = Field(0.5, ge=0, description="Weight of a thumbs-down sample under `downweight`.")
    export_min_rows: int = Field(1, ge=1, description="Fewer new feedback rows than this: export is skipped.")
    export_max_rows: int = Field(2_000_000, ge=1, description="Most feedback rows one export claims.")
    holdout_percent: int = Field(10, ge=0, le=50, description="Share of exported rows held out for evaluation.")

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in {"file", "s3"}:
            raise ValueError("storage_url must start with file:// or s3://")
        return value

    # Derived locations: defaults point inside `home` so one folder holds all embedded state.
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'continuum.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.home / 'objects').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    def s3_credentials(self) -> tuple[str, str]:
        """Access key and secret: CONTINUUM_S3_* first, then the standard AWS variables."""
        key = self.s3_access_key_id.get_secret_value() or os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = self.s3_secret_access_key.get_secret_value() or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        return key, secret

    def s3_region_name(self) -> str:
        return self.s3_region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"

    def check(self) -> "Settings":
        """Refuse unsafe settings outside embedded mode; returns self so callers can chain."""
        if self.mode is Mode.embedded:
            return self
        problems: list[str] = []
        if not self.database_url:
            problems.append("set CONTINUUM_DATABASE_URL (e.g. postgresql+psycopg://user:pass@host/db)")
        else:
            password = urlsplit(self.database_url).password
            if self.database_url.startswith("postgres") and (password or "") in KNOWN_DEFAULT_SECRETS:
                problems.append("the database password in CONTINUUM_DATABASE_URL is missing or a known default")
        if not self.broker_url:
            problems.append("set CONTINUUM_BROKER_URL (e.g. redis://:password@host:6379/0)")
        if self.resolved_storage_url.startswith("s3://"):
            _, secret = self.s3_credentials()
            if secret in KNOWN_DEFAULT_SECRETS:
                problems.append(
                    "the S3 secret key (CONTINUUM_S3_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY) is missing or a known default"
                )
        if problems:
            raise ConfigError("distributed mode refuses unsafe settings: " + "; ".join(problems))
        return self

    def check_flower_auth(self) -> str:
        """The Flower `user:password`; outside embedded mode a missing or default password is refused."""
        auth = self.flower_basic_auth.get_secret_value()
        user, _, password = auth.partition(":")
        if self.mode is Mode.distributed and (not user or password in KNOWN_DEFAULT_SECRETS):
            raise ConfigError("set CONTINUUM_FLOWER_BASIC_AUTH=user:strong-password before starting Flower")
        return auth


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (plus explicit overrides); the only place they are made."""
    from pydantic import ValidationError as PydanticValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except PydanticValidationError as exc:
        problems = [f"CONTINUUM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
