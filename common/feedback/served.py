"""Feedback on served answers: the answers `continuum serve` gave, and judgements sent over HTTP.

Every answer the server gives is stored (`served_responses`) under the id it returns, so a product can
send feedback with that id alone and the feedback row carries exactly the conversation the model saw
and the answer it gave. A judgement over HTTP goes through the same validation as `continuum feedback
import`: a bad one is quarantined with its reason and refused as a whole; a good one is inserted with
the importer's duplicate rules (same content, or same id, adds nothing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import ServedResponse
from common.errors import NotFound, ValidationError
from common.feedback.importer import ImportSummary, _BatchWriter
from common.feedback.schema import problems_of
from common.settings import Settings

HTTP_SOURCE = "http POST /v1/feedback"  # the quarantine's `source` for judgements sent over HTTP
# Fields a request may add to a judgement of a served answer; the conversation comes from the store.
_SERVED_FIELDS = frozenset({"response_id", "feedback", "id", "metadata", "created_at"})


def record_served_response(sessions: sessionmaker[Session], response_id: str, adapter_id: int | None,
                           model: str, messages: list[dict[str, str]], response: str) -> None:
    """Keep an answer the server gave, under the id it returned."""
    with session_scope(sessions) as session:
        session.add(ServedResponse(id=response_id, adapter_id=adapter_id, model=model,
                                   messages=messages, response=response))


def served_response(sessions: sessionmaker[Session], response_id: str) -> ServedResponse:
    with session_scope(sessions) as session:
        row = session.get(ServedResponse, response_id)
        if row is None:
            raise NotFound(f"no served answer has id {response_id!r}: send the `id` of a "
                           f"/v1/chat/completions answer, or prompt + response instead")
        session.expunge(row)
        return row


def _as_feedback_row(sessions: sessionmaker[Session], body: Mapping[str, Any]) -> dict[str, Any]:
    """The feedback row a request describes: a served answer by id, or the request itself."""
    if "response_id" not in body:
        return dict(body)
    unknown = sorted(set(body) - _SERVED_FIELDS)
    if unknown:
        raise ValidationError(f"with 'response_id', give only {', '.join(sorted(_SERVED_FIELDS))} "
                              f"(the conversation is the served one); unexpected: {', '.join(unknown)}")
    response_id = body["response_id"]
    if not isinstance(response_id, str) or not response_id:
        raise ValidationError("'response_id' must be the non-empty `id` of a served answer")
    served = served_response(sessions, response_id)
    metadata = body.get("metadata")
    served_fields = {"response_id": response_id, "served_model": served.model, "adapter_id": served.adapter_id}
    row: dict[str, Any] = {
        "messages": list(served.messages) + [{"role": "assistant", "content": served.response}],
        "feedback": body.get("feedback"),
        # One judgement per served answer: a second one on the same id is a duplicate.
        "id": body.get("id", f"served:{response_id}"),
        # A metadata that is not an object is passed on as it is, for the schema check to name.
        "metadata": {**metadata, **served_fields} if isinstance(metadata, dict) else
        served_fields if metadata is None else metadata,
    }
    if "created_at" in body:
        row["created_at"] = body["created_at"]
    return row


def record_feedback_request(sessions: sessionmaker[Session], settings: Settings, body: Any) -> ImportSummary:
    """Validate and store one judgement sent over HTTP; all or nothing.

    Raises ValidationError (every problem, one message) after quarantining the request, or NotFound for
    an unknown `response_id`. Returns the summary: `inserted` 1, or `duplicate` 1 if already known.
    """
    if not isinstance(body, Mapping):
        problems = [f"the body must be a JSON object, got {type(body).__name__}"]
        quarantine_request(sessions, body, problems)
        raise ValidationError(problems)
    data = _as_feedback_row(sessions, body)
    row, problems = problems_of(data, settings.feedback_max_chars)
    if row is None:
        quarantine_request(sessions, body, problems)
        raise ValidationError(problems)
    with session_scope(sessions) as session:
        writer = _BatchWriter(session, seen_ids=set())
        writer.add(row)
        return writer.summary()


def quarantine_request(sessions: sessionmaker[Session], body: Any, problems: list[str]) -> None:
    """Keep a refused request with its reasons, in a transaction of its own (the refusal raises)."""
    with session_scope(sessions) as session:
        writer = _BatchWriter(session, seen_ids=set())
        writer.quarantine(HTTP_SOURCE, None, json.dumps(body, default=str, ensure_ascii=False), problems)
        writer.summary()
