"""Feedback import on real databases: exact counts, quarantine with line numbers, the CLI's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from common.db import Feedback, FeedbackContent, FeedbackQuarantine, create_db_engine, session_factory
from common.errors import PermanentError, ValidationError
from common.feedback import import_feedback_file, record_feedback, record_feedback_rows
from common.settings import load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAX_CHARS = 200


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str:
    return request.getfixturevalue(f"migrated_{request.param}_url")


@pytest.fixture
def sessions(db_url):
    engine = create_db_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def settings():
    return load_settings(feedback_max_chars=MAX_CHARS)


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def mixed_file(path: Path) -> Path:
    """Lines 1-12: 4 valid new rows, 1 same-file duplicate id, 1 blank line, 6 bad rows."""
    chat = {
        "messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
        "feedback": "thumbs_up",
        "id": "chat-1",
        "metadata": {"session": "s1"},
    }
    path.write_bytes(
        line({"prompt": "2+2?", "response": "4", "feedback": "thumbs_up", "id": "a"})  # 1 ok
        + line(chat)  # 2 ok (chat)
        + b"\n"  # 3 blank: ignored
        + b'{"prompt": "x", "response": \n'  # 4 bad JSON
        + b'{"prompt": "caf\xe9", "response": "ok", "feedback": "thumbs_up"}\n'  # 5 invalid UTF-8
        + line({"prompt": "x" * (MAX_CHARS + 1), "response": "r", "feedback": "thumbs_up"})  # 6 over size
        + line({"prompt": "2+2?", "response": "5", "feedback": "thumbs_down", "id": "a"})  # 7 duplicate id
        + line({"prompt": "p", "response": "r", "feedback": "meh"})  # 8 unknown feedback value
        + line({"prompt": "no id", "response": "r", "feedback": "thumbs_down", "created_at": "2024-01-02T03:04:05Z"})  # 9 ok
        + line({"messages": [{"role": "user", "content": "hi"}], "feedback": "thumbs_up"})  # 10 no assistant turn
        + line({"prompt": "", "response": 7, "feedback": "thumbs_up"})  # 11 two problems
        + line({"prompt": "last", "response": "row", "feedback": "thumbs_up", "id": "z"})  # 12 ok
    )
    return path


def test_mixed_file_gives_exact_counts_and_quarantine(sessions, settings, tmp_path):
    path = mixed_file(tmp_path / "mixed.jsonl")
    summary = import_feedback_file(sessions, settings, path)
    assert (summary.inserted, summary.duplicate, summary.quarantined) == (4, 1, 6)

    with sessions() as session:
        rows = {r.external_id: r for r in session.scalars(select(Feedback))}
        assert sorted(rows, key=str) == sorted(["a", "chat-1", None, "z"], key=str)
        assert rows["a"].response == "4"  # the first row with id "a" won, the later one was not stored
        chat = rows["chat-1"]
        assert (chat.prompt, chat.response, chat.metadata_) == ("Capital of France?", "Paris", {"session": "s1"})
        assert chat.messages[-1] == {"role": "assistant", "content": "Paris"}
        assert rows[None].created_at.replace(tzinfo=None).isoformat() == "2024-01-02T03:04:05"
        assert all(r.dataset_id is None and len(r.content_hash) == 64 for r in rows.values())

        bad = session.scalars(select(FeedbackQuarantine).order_by(FeedbackQuarantine.line_number)).all()
    assert [b.line_number for b in bad] == [4, 5, 6, 8, 10, 11]
    reasons = {b.line_number: b.reason for b in bad}
    assert reasons[4].startswith("bad JSON")
    assert reasons[5].startswith("invalid UTF-8")
    assert f"over the limit of {MAX_CHARS}" in reasons[6]
    assert "'feedback' must be one of" in reasons[8]
    assert "no assistant turn" in reasons[10]
    assert "'prompt' is empty" in reasons[11] and "'response' must be a string" in reasons[11]
    assert all(b.source == str(path) for b in bad)
    assert "caf\\xe9" in next(b.raw for b in bad if b.line_number == 5)  # raw kept, readable


def test_reimporting_the_same_file_adds_nothing(sessions, settings, tmp_path):
    path = mixed_file(tmp_path / "mixed.jsonl")
    import_feedback_file(sessions, settings, path)
    again = import_feedback_file(sessions, settings, path)
    # Rows with an id are known by id, the row without one by its content: nothing is stored twice.
    assert (again.inserted, again.duplicate, again.quarantined) == (0, 5, 6)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 4
        # Its bad rows are reported again (quarantined 6) but kept once.
        assert session.scalar(select(func.count()).select_from(FeedbackQuarantine)) == 6


def test_duplicates_by_content_and_by_id(sessions, settings):
    """Content = conversation + response + feedback: the same judgement again is a duplicate whatever
    its id; another feedback value on the same answer is not; a known id with new content is, and its
    content stays free for a row that brings it later."""
    up = {"prompt": "Capital of Peru?", "response": "Lima", "feedback": "thumbs_up"}
    assert record_feedback_rows(sessions, settings, [up, dict(up, id="x1")]).as_dict()["inserted"] == 1
    down = dict(up, feedback="thumbs_down")
    assert record_feedback_rows(sessions, settings, [down]).inserted == 1
    assert record_feedback_rows(sessions, settings, [{"prompt": "other", "response": "r", "feedback": "thumbs_up",
                                                      "id": "taken"}]).inserted == 1
    reused = {"prompt": "Capital of Chile?", "response": "Santiago", "feedback": "thumbs_up", "id": "taken"}
    assert record_feedback_rows(sessions, settings, [reused]).duplicate == 1  # id known
    assert record_feedback_rows(sessions, settings, [dict(reused, id="fresh")]).inserted == 1  # content was free
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 4


def test_large_file_is_batched(sessions, settings, tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        for i in range(5_000):
            fh.write(line({"prompt": f"q{i}", "response": "a", "feedback": "thumbs_up", "id": f"id-{i % 4_500}"}))
    summary = import_feedback_file(sessions, settings, path)
    assert (summary.inserted, summary.duplicate, summary.quarantined) == (4_500, 500, 0)
    with sessions() as session:  # every stored row's content is claimed, and only those
        assert session.scalar(select(func.count()).select_from(FeedbackContent)) == 4_500


def test_python_api_validates_everything_before_inserting(sessions, settings):
    assert record_feedback(sessions, settings, prompt="p", response="r", feedback="thumbs_up", external_id="e1") is True
    assert record_feedback(sessions, settings, prompt="p", response="r", feedback="thumbs_up", external_id="e1") is False
    with pytest.raises(ValidationError) as caught:
        record_feedback_rows(
            sessions,
            settings,
            [{"prompt": "ok", "response": "ok", "feedback": "thumbs_up"}, {"prompt": "", "feedback": "nope"}],
        )
    problems = caught.value.problems
    assert problems[0].startswith("row 1: ") and len(problems) == 3  # empty prompt, missing response, bad value
    with pytest.raises(ValidationError, match="missing 'prompt'"):
        record_feedback(sessions, settings, feedback="thumbs_up")
    summary = record_feedback_rows(
        sessions,
        settings,
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "feedback": "thumbs_down"}],
    )
    assert summary.inserted == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 2  # the failed batch stored nothing


def test_missing_file_is_a_clear_error(sessions, settings, tmp_path):
    with pytest.raises(PermanentError, match="does not exist"):
        import_feedback_file(sessions, settings, tmp_path / "nope.jsonl")


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(CONTINUUM_DATABASE_URL=db_url, CONTINUUM_HOME=os.environ["CONTINUUM_HOME"], CONTINUUM_FEEDBACK_MAX_CHARS=str(MAX_CHARS))
    return subprocess.run(
        [sys.executable, "-c", "from scheduler.cli import main; main()", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_prints_summary_and_exits_nonzero_only_without_valid_rows(db_url, tmp_path):
    path = mixed_file(tmp_path / "mixed.jsonl")
    done = run_cli(db_url, "feedback", "import", str(path), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {k: v for k, v in json.loads(done.stdout).items() if k != "first_problems"} == {
        "inserted": 4, "duplicate": 1, "quarantined": 6,
    }

    table = run_cli(db_url, "feedback", "import", str(path))  # all known now: still valid rows, exit 0
    assert table.returncode == 0, table.stdout + table.stderr
    assert "inserted" in table.stdout and "quarantined" in table.stdout and "line 4: bad JSON" in table.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"not json\n\xff\n")
    failed = run_cli(db_url, "feedback", "import", str(bad))
    assert failed.returncode == 1
    assert "no valid feedback row" in failed.stdout + failed.stderr

    missing = run_cli(db_url, "feedback", "import", str(tmp_path / "missing.jsonl"))
    assert missing.returncode != 0 and "does not exist" in missing.stdout + missing.stderr
