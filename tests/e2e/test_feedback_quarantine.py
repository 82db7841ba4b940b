"""`continuum feedback quarantine list|show|drop` through the real CLI, at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.distributed.harness import REPO


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=REPO,
                          env=dict(os.environ, COLUMNS="80"), capture_output=True, text=True, timeout=120)


def test_list_show_and_drop_quarantined_rows(tmp_path):
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text(
        json.dumps({"prompt": "q?", "response": "a", "feedback": "thumbs_up"}) + "\n"
        + "{not json\n"
        + json.dumps({"prompt": "q2?", "response": "a2", "feedback": "meh"}) + "\n"
    )
    assert _cli("feedback", "import", str(feedback)).returncode == 0
    listed = json.loads(_cli("feedback", "quarantine", "list", "--json").stdout)
    assert [r["line_number"] for r in listed] == [3, 2]
    assert "feedback" in listed[0]["reason"] and listed[0]["source"].endswith("fb.jsonl")
    table = _cli("feedback", "quarantine", "list")
    assert "fb.jsonl:3" in table.stdout and max(len(line) for line in table.stdout.splitlines()) <= 80
    # The same file again: its bad rows are reported again but not stored twice.
    again = _cli("feedback", "import", str(feedback))
    assert again.returncode == 0 and "line 2" in again.stdout
    assert len(json.loads(_cli("feedback", "quarantine", "list", "--json").stdout)) == 2
    shown = _cli("feedback", "quarantine", "show", str(listed[1]["id"]))
    assert "line 2" in shown.stdout and "{not json" in shown.stdout

    missing = _cli("feedback", "quarantine", "drop", str(listed[0]["id"]), "999")
    assert missing.returncode != 0 and "no quarantined row 999" in missing.stderr
    assert len(json.loads(_cli("feedback", "quarantine", "list", "--json").stdout)) == 2  # nothing dropped
    dropped = json.loads(_cli("feedback", "quarantine", "drop", str(listed[0]["id"]), "--json").stdout)
    assert dropped == {"dropped": 1}
    assert [r["line_number"] for r in json.loads(_cli("feedback", "quarantine", "list", "--json").stdout)] == [2]
    assert _cli("feedback", "quarantine", "drop").returncode != 0  # neither ids nor --all
    assert json.loads(_cli("feedback", "quarantine", "drop", "--all", "--json").stdout) == {"dropped": 1}
