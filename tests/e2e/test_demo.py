"""`continuum demo` end to end on the embedded default: real worker process, real cycles, twice in one home.

Also checks the `--json` output of the listing commands a script would read (adapters, datasets, jobs,
pipeline runs) against the state the demo left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.distributed.harness import REPO

pytestmark = pytest.mark.slow


def _cli(*args: str, home: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=REPO,
                          env=dict(os.environ, CONTINUUM_HOME=str(home)), capture_output=True, text=True,
                          timeout=timeout)


def _demo(home: Path, *args: str) -> dict:
    started = time.monotonic()
    result = _cli("demo", "--no-naive", "--json", *args, home=home, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = json.loads(result.stdout)  # --json: stdout is exactly one JSON document, progress is on stderr
    print(f"demo {' '.join(args)}: {time.monotonic() - started:.0f}s wall, {out['seconds']:.0f}s reported")
    return out


def _listing(home: Path, *command: str):
    result = _cli(*command, "--json", home=home, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _check_report(path: str) -> None:
    html = Path(path).read_text()
    assert html.lower().startswith("<!doctype html>")
    assert html.count('src="data:image/png;base64,') >= 4  # self-contained: every plot inlined


def test_demo_runs_two_cycles_through_a_real_worker_and_is_safe_to_run_twice(tmp_path):
    home = tmp_path / "home"
    first = _demo(home, "--rounds", "2", "--facts", "8", "--epochs", "2")
    cycles = first["cycles"]
    assert [c["round"] for c in cycles] == [1, 2] and [c["version"] for c in cycles] == ["v1", "v2"]
    assert all(0.0 <= c["recall"] <= 1.0 for c in cycles)
    assert cycles[0]["forgetting"] is None  # a first round has nothing to forget: "–", never 0.0
    assert cycles[0]["retention"] == {} and set(cycles[1]["retention"]) == {"1"}  # round 2 measures round 1
    assert all(c["promoted"] in {"yes", "rejected"} for c in cycles)
    _check_report(first["report"])

    demo_home = home / "demo"  # the demo keeps its state apart from the user's own home
    adapters = _listing(demo_home, "adapters", "list")
    assert [(a["name"], a["version"], a["parent_id"]) for a in adapters] == [("default", 1, None), ("default", 2, 1)]
    assert adapters[1]["lineage"] == [1, 2] and all(a["uri"].startswith("file://") for a in adapters)
    promoted = [c["round"] for c in cycles if c["promoted"] == "yes"]
    assert [a["version"] for a in adapters if a["production"]] == promoted[-1:]  # the last promoted one serves
    assert [a["recall"] for a in adapters] == [c["recall"] for c in cycles]

    datasets = _listing(demo_home, "datasets", "list")
    assert [d["rows"] for d in datasets] == [8, 8] and all(d["train"] + d["probe"] + d["holdout"] == 8 for d in datasets)
    assert datasets[0]["feedback_ids"] == [1, 8] and datasets[1]["feedback_ids"] == [9, 16]

    runs = _listing(demo_home, "pipeline", "list")
    assert len(runs) == 2 and {r["state"] for r in runs} == {"succeeded"} and {r["step"] for r in runs} == {"promote"}

    jobs = _listing(demo_home, "jobs", "list")
    assert sorted(j["kind"] for j in jobs) == sorted(["export", "fisher", "train", "evaluate", "promote"] * 2)
    assert {j["pipeline_run_id"] for j in jobs} == {r["id"] for r in runs}
    assert all(j["state"] in {"succeeded", "skipped"} and j["attempts"] == 1 for j in jobs)
    assert {j["queue"] for j in jobs if j["kind"] in {"train", "evaluate", "fisher"}} == {"cpu"}

    # Second run in the same home: starts clean (one round now), no leftovers from the first run.
    second = _demo(home, "--rounds", "1", "--facts", "4", "--epochs", "1")
    assert [c["round"] for c in second["cycles"]] == [1] and second["cycles"][0]["version"] == "v1"
    _check_report(second["report"])
    assert len(_listing(demo_home, "pipeline", "list")) == 1
    assert [d["rows"] for d in _listing(demo_home, "datasets", "list")] == [4]
    assert len(_listing(demo_home, "adapters", "list")) == 1


def test_demo_on_an_unregistered_model_fails_at_once_naming_the_fix(tmp_path):
    started = time.monotonic()
    result = _cli("demo", "--model", "no-such-model", home=tmp_path / "home", timeout=60)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "--model 'no-such-model'" in lines[0] and "continuum model add" in lines[0], lines
    assert time.monotonic() - started < 20
    assert not (tmp_path / "home" / "demo").exists()  # refused before the demo home was wiped or made
