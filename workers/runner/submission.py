"""Decode a job task's message kwargs, creating the ledger row when a non-Python client sent the job.

Our own producer writes the ledger row first and sends `{"job_id": …}`. A client in another language
(or a plain Celery client with no continuum import) cannot write that row, so the task accepts two more
shapes and creates the row itself, idempotently:

- `{"job_id": "<new uuid>", "params": {…}}`: the row gets this id (and the key `job:<id>`);
- `{"params": {…}, "idempotency_key": "<key>"}`: the row is found or created under the key
  (`job_id` may be given too). With neither, the Celery message id is the key, so a redelivered
  message never makes a second job.

The message's shape is checked strictly here (a bad message fails the Celery task with one line
naming the fix, and writes nothing); the params themselves are checked by the job's own config when
it runs, and a bad value fails the job row with the reason.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError

from common.errors import ValidationError
from common.ledger import JobLedger
from common.settings import Settings
from workers.kinds import ALL_QUEUES, JobKind

log = logging.getLogger("continuum.runner")

_KEY_MAX = 200  # jobs.idempotency_key is String(200)
PAYLOAD_HELP = 'send kwargs {"job_id": "<uuid>"} or {"params": {...}, "idempotency_key": "<key>"} (see README: Sending jobs from other languages)'


def _problems(job_id: Any, params: Any, idempotency_key: Any, unknown: dict[str, Any]) -> list[str]:
    problems = [f"unknown message field {name!r}" for name in sorted(unknown)]
    if job_id is not None:
        try:
            if not isinstance(job_id, str) or str(uuid.UUID(job_id)) != job_id.lower():
                raise ValueError
        except ValueError:
            problems.append(f"job_id must be a UUID string like {str(uuid.UUID(int=0))!r}, got {job_id!r}")
    if params is not None and not isinstance(params, dict):
        problems.append(f"params must be a JSON object, got {type(params).__name__}")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key.strip()
                                        or len(idempotency_key) > _KEY_MAX):
        problems.append(f"idempotency_key must be a non-empty string of at most {_KEY_MAX} characters")
    if idempotency_key is not None and params is None:
        problems.append("idempotency_key needs params (the job to create under it)")
    if job_id is None and params is None:
        problems.append("the message names no job")
    return problems


def resolve_job_id(
    settings: Settings,
    ledger: JobLedger,
    kind: JobKind,
    *,
    job_id: Any = None,
    params: Any = None,
    idempotency_key: Any = None,
    unknown: dict[str, Any] | None = None,
    message_id: str | None = None,
    delivered_to: str | None = None,
) -> str:
    """The id of the ledger job this message is about, creating its row for a message with `params`.

    Raises ValidationError (one line listing every problem) for a malformed message.
    """
    problems = _problems(job_id, params, idempotency_key, unknown or {})
    if problems:
        raise ValidationError(f"bad {kind.task_name} message: {'; '.join(problems)}; {PAYLOAD_HELP}")
    if params is None:
        return job_id  # our producer's message: the row already exists
    if job_id is not None and (existing := ledger.find(job_id)) is not None:
        if existing.kind != kind.name:
            raise ValidationError(f"job {job_id} is a {existing.kind!r} job, not {kind.name!r}: send a new job_id")
        return job_id  # a redelivery of a message whose row we created already
    key = idempotency_key or (None if job_id else f"message:{message_id}" if message_id else None)
    queue = delivered_to if delivered_to in ALL_QUEUES else kind.default_queue
    try:
        job, created = ledger.create(kind.name, params, queue=queue, idempotency_key=key, job_id=job_id,
                                     max_attempts=settings.job_max_attempts)
    except IntegrityError:
        # Two deliveries of one message raced to insert the same id: the other one won.
        job, created = ledger.get(job_id), False
    log.info("%s job %s from a foreign message (key %s)", "created" if created else "found", job.id, key)
    return job.id
