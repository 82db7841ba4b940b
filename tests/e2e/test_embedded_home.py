"""The embedded home (issue 9): concurrent first use, private files, and the whole by-hand journey
run from a folder other than the repository with the default home (`.continuum` in that folder).

Real `python -m scheduler` processes, real embedded workers; nothing simulated.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.distributed.harness import REPO


def _env(home: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    # The venv's editable install may point at another checkout: keep this tree first on the path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if home is not None:
        env["CONTINUUM_HOME"] = str(home)
    return env


def _start(*args: str, cwd: Path, home: Path | None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scheduler", *args], cwd=cwd, env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(*args: str, cwd: Path, home: Path | None = None, timeout: float = 300, as_json: bool = True):
    proc = _start(*args, *(["--json"] if as_json else []), cwd=cwd, home=home)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-2000:]}\n{err[-4000:]}"
    if not as_json:
        return out
    return json.loads(out[out.index("{") if out.lstrip().startswith("{") else out.index("["):])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _feedback_file(path: Path, rows: int = 12) -> Path:
    lines = [json.dumps({"prompt": f"What is the code word {i}?", "response": f"The code word {i} is tangerine-{i}.",
                         "feedback": "thumbs_up"}) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_three_concurrent_commands_on_a_fresh_home_all_succeed_and_keep_it_private(tmp_path):
    """Before the migration lock two of three failed ("table already exists"); each round is a fresh
    home, so a lucky interleaving in one round cannot hide the race."""
    feedback = _feedback_file(tmp_path / "feedback.jsonl", rows=4)
    for round_ in range(3):
        home = tmp_path / f"home{round_}"
        procs = [_start("jobs", "list", "--json", cwd=tmp_path, home=home),
                 _start("pipeline", "list", "--json", cwd=tmp_path, home=home),
                 _start("feedback", "import", str(feedback), "--json", cwd=tmp_path, home=home)]
        results = [(proc, *proc.communicate(timeout=300)) for proc in procs]
        for proc, out, err in results:
            assert proc.returncode == 0, f"round {round_}: {proc.args[3:]} failed:\n{out[-1000:]}\n{err[-3000:]}"
        assert _mode(home) == 0o700
        assert _mode(home / "continuum.db") == 0o600
        for extra in ("continuum.db-wal", "continuum.db-shm"):
            if (home / extra).exists():
                assert _mode(home / extra) == 0o600, extra


@pytest.mark.slow
def test_the_by_hand_journey_from_another_folder_with_the_default_home(tmp_path):
    """init → feedback import → export → train → evaluate → promote, run from a folder that is not
    the repository, with no CONTINUUM_HOME: the embedded workers must use `<folder>/.continuum` too
    (before, they watched the repository's `.continuum` and each command failed after 120 s)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert elsewhere.resolve() != REPO.resolve()
    feedback = _feedback_file(elsewhere / "feedback.jsonl")

    _run("init", cwd=elsewhere, as_json=False)
    assert (elsewhere / ".continuum" / "continuum.db").is_file()  # the default home, in this folder
    imported = _run("feedback", "import", str(feedback), cwd=elsewhere)
    assert imported["inserted"] == 12, imported
    exported = _run("export", "--min-rows", "1", cwd=elsewhere)
    assert exported["status"] == "exported" and exported["rows"] == 12, exported
    dataset_id = exported["dataset_id"]
    trained = _run("train", "--dataset", str(dataset_id), "--epochs", "1", "--device", "cpu", cwd=elsewhere,
                   timeout=600)
    assert trained["state"] == "succeeded" and trained["adapter_id"], trained
    evaluated = _run("evaluate", "--adapter", str(trained["adapter_id"]), "--device", "cpu", cwd=elsewhere,
                     timeout=600)
    assert evaluated["state"] == "succeeded" and evaluated["evaluation_id"], evaluated
    promoted = _run("promote", "--evaluation", str(evaluated["evaluation_id"]), "--force", cwd=elsewhere)
    assert promoted["state"] == "succeeded", promoted

    home = elsewhere / ".continuum"
    assert _mode(home) == 0o700 and _mode(home / "continuum.db") == 0o600
    adapters = _run("adapters", "list", cwd=elsewhere)
    assert [a["id"] for a in adapters if a["production"]] == [trained["adapter_id"]]
    objects = [p for p in (home / "objects").rglob("*") if p.is_file()]
    assert objects and all(_mode(p) == 0o600 for p in objects)
    assert _mode(home / "logs" / "worker.log") == 0o600
    assert _mode(home / "broker.db") == 0o600
