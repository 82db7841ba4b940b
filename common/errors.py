"""One exception root for continuum.

`RetryableError` vs `PermanentError` is the single place that decides whether a failed job is tried
again (a server blipped) or fails for good (bad input, missing file). Every message is one line that
names the fix.
"""

from __future__ import annotations


class ContinuumError(Exception):
    """Root of every error continuum raises on purpose."""


class RetryableError(ContinuumError):
    """A transient failure (network, lock, throttling): trying again later may succeed."""


class PermanentError(ContinuumError):
    """A failure that retrying cannot fix (bad input, missing object, wrong config)."""


class ConfigError(PermanentError):
    """Settings are invalid or unsafe; the message lists every problem and how to fix it."""


class ValidationError(PermanentError):
    """User input (a feedback row, job parameters) failed validation."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class ObjectStoreError(ContinuumError):
    """Base for object-store failures."""


class ObjectNotFound(ObjectStoreError, PermanentError):
    """The key does not exist in the object store."""


class InvalidKey(ObjectStoreError, PermanentError):
    """An object key is unsafe (absolute, `..`, control characters) or malformed."""


class ObjectStoreUnavailable(ObjectStoreError, RetryableError):
    """The object store could not be reached or throttled us; retry later."""


class ObjectStorePermanent(ObjectStoreError, PermanentError):
    """The object store refused the request for a reason retrying will not fix (auth, bucket)."""


class DatabaseUnavailable(RetryableError):
    """The database could not be reached."""


class BrokerUnavailable(RetryableError):
    """The Celery broker (Redis, or the embedded broker) could not be reached."""


class NotFound(PermanentError):
    """A named record (adapter, dataset, job) does not exist."""
