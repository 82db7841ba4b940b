"""Validation of one feedback input row, in either accepted shape, collecting every problem at once.

Two shapes are accepted (one JSON object per row):

* prompt shape: ``{"prompt": str, "response": str, "feedback": "thumbs_up"|"thumbs_down",
  "created_at"?: ISO-8601, "id"?: str, "metadata"?: object}``
* chat shape: ``{"messages": [{"role", "content"}, ...], "feedback": ..., same optional fields}``.
  The LAST assistant message is the response; the conversation before it is the prompt (rendered as
  text for models without a chat template) and the messages up to the response are kept as well.
  Turns after the last assistant message carry no judgement and are not kept.

A row that fails gets ONE message listing every problem, so a user fixes a file in one pass.
`content_hash` identifies the judged content (conversation, response, feedback) for dedup at export.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from common.errors import ValidationError

FEEDBACK_VALUES = ("thumbs_up", "thumbs_down")
ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_EXTERNAL_ID_CHARS = 200  # the feedback.external_id column width


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """A validated row, ready to insert into the `feedback` table."""

    prompt: str
    response: str
    feedback: str
    content_hash: str
    messages: list[dict[str, str]] | None = None
    external_id: str | None = None
    created_at: datetime | None = None
    metadata: dict[str, Any] | None = None

    def to_db(self, received_at: datetime) -> dict[str, Any]:
        """Column values for a Core insert (every key always present, as executemany needs)."""
        return {
            "external_id": self.external_id,
            "prompt": self.prompt,
            "response": self.response,
            "messages": self.messages,
            "feedback": self.feedback,
            "metadata": self.metadata,
            "content_hash": self.content_hash,
            "created_at": self.created_at or received_at,
            "received_at": received_at,
        }


def content_hash(prompt: str, response: str, feedback: str, messages: list[dict[str, str]] | None = None) -> str:
    """sha256 of a canonical JSON form of what was judged; equal content → equal hash."""
    judged: dict[str, Any] = {"feedback": feedback, "response": response}
    if messages is not None:
        # The response is the last kept message; hash the conversation before it.
        judged["context"] = [[m["role"], m["content"]] for m in messages[:-1]]
    else:
        judged["prompt"] = prompt
    canonical = json.dumps(judged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def render_prompt(context: list[dict[str, str]]) -> str:
    """The conversation before the response as plain text: one user turn stays as it is."""
    if len(context) == 1 and context[0]["role"] == "user":
        return context[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in context)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(name: str, value: Any, max_chars: int, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"missing {name!r}")
        return None
    if not isinstance(value, str):
        problems.append(f"{name!r} must be a string, got {_type_name(value)}")
        return None
    if not value.strip():
        problems.append(f"{name!r} is empty")
        return None
    if len(value) > max_chars:
        problems.append(f"{name!r} has {len(value)} characters, over the limit of {max_chars}")
        return None
    unstorable = _unstorable(value)
    if unstorable:
        problems.append(f"{name!r} {unstorable}")
        return None
    return value


def _unstorable(value: str) -> str | None:
    """Why a decoded string cannot be stored as text (Postgres refuses NUL and lone surrogates)."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate escape (invalid UTF-16 in \\u escapes)"
    return None


def _check_messages(value: Any, max_chars: int, problems: list[str]) -> tuple[str, str, list[dict[str, str]]] | None:
    """(prompt, response, kept messages) of a chat row, or None after recording its problems."""
    if not isinstance(value, list):
        problems.append(f"'messages' must be a list of {{role, content}} objects, got {_type_name(value)}")
        return None
    if not value:
        problems.append("'messages' is empty")
        return None
    problems_before = len(problems)
    clean: list[dict[str, str]] = []
    ok = True
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            problems.append(f"messages[{i}] must be an object, got {_type_name(message)}")
            ok = False
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}")
            ok = False
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content must be a string, got {_type_name(content)}")
            ok = False
            continue
        unstorable = _unstorable(content)
        if unstorable:
            problems.append(f"messages[{i}].content {unstorable}")
            ok = False
            continue
        clean.append({"role": role, "content": content})
    if not ok:
        return None
    last_assistant = max((i for i, m in enumerate(clean) if m["role"] == "assistant"), default=None)
    if last_assistant is None:
        problems.append("'messages' has no assistant turn to judge (the last assistant message is the response)")
        return None
    kept = clean[: last_assistant + 1]
    context = kept[:-1]
    if not any(m["content"].strip() for m in context):
        problems.append("'messages' has no prompt: nothing non-empty before the last assistant message")
    response = _check_text("response (last assistant message)", kept[-1]["content"], max_chars, problems)
    prompt = render_prompt(context) if context else ""
    if len(prompt) > max_chars:
        problems.append(f"the conversation before the response has {len(prompt)} characters, over the limit of {max_chars}")
    if response is None or len(problems) > problems_before:
        return None
    return prompt, response, kept


def _check_created_at(value: Any, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"'created_at' must be an ISO-8601 string, got {_type_name(value)}")
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        problems.append(f"'created_at' {value[:40]!r} is not an ISO-8601 timestamp (e.g. 2024-05-01T12:00:00Z)")
        return None
    # A timestamp without an offset is taken as UTC, the only zone the database stores.
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def problems_of(data: Any, max_chars: int) -> tuple[FeedbackRow | None, list[str]]:
    """Validate one decoded row: (row, []) when valid, else (None, every problem found)."""
    if not isinstance(data, dict):
        return None, [f"a row must be a JSON object, got {_type_name(data)}"]
    problems: list[str] = []
    has_chat = "messages" in data
    has_plain = "prompt" in data or "response" in data
    prompt = response = None
    messages = None
    if has_chat and has_plain:
        problems.append("give either 'prompt'/'response' or 'messages', not both")
    elif has_chat:
        chat = _check_messages(data["messages"], max_chars, problems)
        if chat is not None:
            prompt, response, messages = chat
    else:
        prompt = _check_text("prompt", data.get("prompt"), max_chars, problems)
        response = _check_text("response", data.get("response"), max_chars, problems)

    feedback = data.get("feedback")
    if feedback is None:
        problems.append(f"missing 'feedback' (one of {', '.join(FEEDBACK_VALUES)})")
    elif feedback not in FEEDBACK_VALUES:
        problems.append(f"'feedback' must be one of {', '.join(FEEDBACK_VALUES)}, got {str(feedback)[:40]!r}")

    external_id = data.get("id")
    if external_id is not None:
        if not isinstance(external_id, str) or not external_id.strip():
            problems.append(f"'id' must be a non-empty string, got {_type_name(external_id)}")
        elif len(external_id) > MAX_EXTERNAL_ID_CHARS:
            problems.append(f"'id' has {len(external_id)} characters, over the limit of {MAX_EXTERNAL_ID_CHARS}")

    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append(f"'metadata' must be an object, got {_type_name(metadata)}")

    created_at = _check_created_at(data.get("created_at"), problems)

    if problems or prompt is None or response is None:
        return None, problems or ["row has no prompt/response"]
    return (
        FeedbackRow(
            prompt=prompt,
            response=response,
            feedback=feedback,
            content_hash=content_hash(prompt, response, feedback, messages),
            messages=messages,
            external_id=external_id,
            created_at=created_at,
            metadata=metadata,
        ),
        [],
    )


def parse_line(raw: bytes, max_chars: int) -> tuple[FeedbackRow | None, list[str]]:
    """Validate one raw JSONL line (bytes, so invalid UTF-8 is reported for this line only)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"invalid UTF-8 at byte {exc.start}: save the file as UTF-8"]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [f"bad JSON: {exc.msg} at column {exc.colno}"]
    return problems_of(data, max_chars)


def validate_row(data: Any, max_chars: int) -> FeedbackRow:
    """A valid row or ValidationError listing every problem (the Python API's entry point)."""
    row, problems = problems_of(data, max_chars)
    if row is None:
        raise ValidationError(problems)
    return row


__all__ = [
    "FEEDBACK_VALUES",
    "FeedbackRow",
    "content_hash",
    "parse_line",
    "problems_of",
    "render_prompt",
    "validate_row",
]
