"""Each kind of bad feedback row gets its own reason, and all of a row's problems come in one message."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from common.errors import ValidationError
from common.feedback.schema import content_hash, parse_line, problems_of, validate_row

MAX = 50


def reasons(data) -> str:
    row, problems = problems_of(data, MAX)
    assert row is None, f"expected {data!r} to be rejected"
    return "; ".join(problems)


def good(**extra):
    return {"prompt": "What is 2+2?", "response": "4", "feedback": "thumbs_up", **extra}


def test_valid_prompt_row_keeps_every_field():
    row = validate_row(good(id="ext-1", metadata={"user": 7}, created_at="2024-05-01T12:00:00+02:00"), MAX)
    assert (row.prompt, row.response, row.feedback, row.external_id) == ("What is 2+2?", "4", "thumbs_up", "ext-1")
    assert row.metadata == {"user": 7}
    assert row.messages is None
    # Stored in UTC (SQLite keeps no zone): 12:00+02:00 is 10:00Z.
    assert row.created_at == datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
    assert len(row.content_hash) == 64


def test_naive_timestamp_is_taken_as_utc():
    assert validate_row(good(created_at="2024-05-01T12:00:00"), MAX).created_at.tzinfo == timezone.utc


def test_chat_row_uses_last_assistant_message_as_response():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "thanks"},  # after the judged turn: not kept
    ]
    row = validate_row({"messages": messages, "feedback": "thumbs_down"}, 200)
    assert row.response == "Paris"
    assert row.messages == messages[:5]
    assert row.prompt == "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Capital of France?"


def test_single_user_turn_prompt_is_the_plain_text():
    row = validate_row(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "feedback": "thumbs_up"},
        MAX,
    )
    assert row.prompt == "Hi"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"response": "4", "feedback": "thumbs_up"}, "missing 'prompt'"),
        (good(prompt=5), "'prompt' must be a string, got int"),
        (good(response="   "), "'response' is empty"),
        (good(prompt="x" * (MAX + 1)), f"'prompt' has {MAX + 1} characters, over the limit of {MAX}"),
        (good(feedback="meh"), "'feedback' must be one of thumbs_up, thumbs_down, got 'meh'"),
        ({"prompt": "a", "response": "b"}, "missing 'feedback'"),
        (good(created_at="yesterday"), "'created_at' 'yesterday' is not an ISO-8601 timestamp"),
        (good(created_at=12), "'created_at' must be an ISO-8601 string, got int"),
        (good(id=3), "'id' must be a non-empty string, got int"),
        (good(id="x" * 201), "'id' has 201 characters, over the limit of 200"),
        (good(metadata=[1]), "'metadata' must be an object, got list"),
        (good(prompt="a\x00b"), "'prompt' contains a NUL character"),
        (good(response="\ud800"), "'response' contains an unpaired surrogate"),
        (good(messages=[]), "give either 'prompt'/'response' or 'messages', not both"),
        ({"messages": "hi", "feedback": "thumbs_up"}, "'messages' must be a list"),
        ({"messages": [], "feedback": "thumbs_up"}, "'messages' is empty"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "feedback": "thumbs_up"},
            "'messages' has no assistant turn",
        ),
        (
            {"messages": [{"role": "assistant", "content": "hi"}], "feedback": "thumbs_up"},
            "'messages' has no prompt",
        ),
        (
            {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}], "feedback": "thumbs_up"},
            "messages[0].role must be one of",
        ),
        (
            {"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "x"}], "feedback": "thumbs_up"},
            "messages[0].content must be a string, got int",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "feedback": "thumbs_up"},
            "'response (last assistant message)' is empty",
        ),
        ([1, 2], "a row must be a JSON object, got list"),
    ],
)
def test_each_bad_row_kind_gets_its_reason(data, expected):
    assert expected in reasons(data)


def test_every_problem_of_a_row_is_reported_at_once():
    message = reasons({"prompt": "", "response": 3, "feedback": "meh", "created_at": "nope", "metadata": "x"})
    for expected in ("'prompt' is empty", "'response' must be a string", "'feedback' must be one of", "'created_at'", "'metadata'"):
        assert expected in message
    with pytest.raises(ValidationError) as caught:
        validate_row({"prompt": "", "response": 3, "feedback": "meh"}, MAX)
    assert len(caught.value.problems) == 3


def test_raw_line_problems_invalid_utf8_and_bad_json():
    row, problems = parse_line(b'{"prompt": "caf\xe9", "response": "x", "feedback": "thumbs_up"}', MAX)
    assert row is None and problems == ["invalid UTF-8 at byte 15: save the file as UTF-8"]
    row, problems = parse_line(b'{"prompt": "a",', MAX)
    assert row is None and problems[0].startswith("bad JSON:")
    row, problems = parse_line(json.dumps(good()).encode(), MAX)
    assert row is not None and problems == []


def test_content_hash_is_canonical_and_covers_what_was_judged():
    base = content_hash("p", "r", "thumbs_up")
    assert base == validate_row({"feedback": "thumbs_up", "response": "r", "prompt": "p", "id": "other"}, MAX).content_hash
    assert base != content_hash("p", "r", "thumbs_down")
    assert base != content_hash("p", "r2", "thumbs_up")
    assert base != content_hash("p2", "r", "thumbs_up")
    chat = [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert content_hash("p", "r", "thumbs_up", chat) != content_hash(
        "p", "r", "thumbs_up", [{"role": "system", "content": "p"}, {"role": "assistant", "content": "r"}]
    )
