"""The newcomer's journey (issue 10), as a person types it: the README's commands, human output (no
`--json` where a person reads), from a folder that is not the repository, with the default home
(`.continuum` there), in an 80-column terminal. Every line every command prints must fit 80 columns,
ids must be copyable from the tables, and each friction the issue lists must stay fixed.

Real `continuum` processes and a real background worker (`continuum up`); nothing simulated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.distributed.harness import REPO

pytestmark = pytest.mark.slow

CONTINUUM = Path(sys.executable).with_name("continuum")
LONG_FLOAT = re.compile(r"\d\.\d{5,}")  # an unrounded figure such as 0.896551724137931


class Shell:
    """Runs `continuum …` in one folder with a clean environment, as a terminal 80 columns wide."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
        self.env.update(COLUMNS="80", PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))

    def __call__(self, *args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([str(CONTINUUM), *args], cwd=self.folder, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        where = f"`continuum {' '.join(args)}` (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
        assert (done.returncode == 0) is ok, where
        if "--json" not in args:  # machine-readable output is for scripts, not for 80 columns
            wide = [line for line in done.stdout.splitlines() if len(line) > 80]
            assert not wide, f"lines wider than 80 columns from {where}"
            assert not LONG_FLOAT.search(done.stdout), f"unrounded figure from {where}"
        return done

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


def _feedback(path: Path, topic: str, rows: int, bad_line: bool = False) -> Path:
    lines = [json.dumps({"prompt": f"What is the {topic} {i}?", "response": f"The {topic} {i} is tangerine-{i}.",
                         "feedback": "thumbs_up"}) for i in range(rows)]
    path.write_text("\n".join(lines + (["{not json"] if bad_line else [])) + "\n")
    return path


def _first_column(table: str) -> list[str]:
    """The first column's cells of a rich table (the rows between the header rule and the bottom)."""
    cells = []
    for line in table.splitlines():
        if line.startswith("│"):
            cells.append(line.split("│")[1].strip())
    return cells


def test_the_readme_journey_at_80_columns_from_another_folder(tmp_path):
    folder = tmp_path / "my-project"
    folder.mkdir()
    assert folder.resolve() != REPO.resolve()
    sh = Shell(folder)
    first = _feedback(folder / "feedback.jsonl", "code word", 12, bad_line=True)
    second = _feedback(folder / "more.jsonl", "door colour", 10)

    sh("init")
    assert (folder / ".continuum" / "continuum.db").is_file()  # the default home is in this folder
    up = sh("up")
    assert "worker up" in up.stdout
    try:
        # Import twice: content deduplication, and the bad line is reported, quarantined once.
        imported = sh("feedback", "import", first.name).stdout
        assert re.search(r"│ 12 +│ 0 +│ 1 +│", imported) and "line 13" in imported
        again = sh("feedback", "import", first.name).stdout
        assert re.search(r"│ 0 +│ 12 +│ 1 +│", again), again
        quarantined = sh("feedback", "quarantine", "list").stdout
        assert quarantined.count("feedback.jsonl:13") == 1

        # export prints the id `train --dataset` takes, as a queued job the ledger knows.
        exported = sh("export", "--min-rows", "1").stdout
        dataset = re.search(r"train it with `continuum train\s+--dataset (\d+)`", exported).group(1)
        assert dataset in _first_column(sh("datasets", "list").stdout)

        # A bad parameter is refused before anything is written.
        jobs_before = len(sh.json("jobs", "list"))
        refused = sh("train", "--dataset", "999", ok=False)
        assert "dataset 999 does not exist" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert len(sh.json("jobs", "list")) == jobs_before

        trained = sh("train", "--dataset", dataset, "--epochs", "1").stdout
        adapter = re.search(r"adapter v1 \(id (\d+)\)", trained).group(1)
        assert not trained.lstrip().startswith("{")  # words, not raw JSON

        # An id copied from the jobs table (8 characters) is enough for `jobs show`.
        listed = sh("jobs", "list").stdout
        short = next(line.split("│")[1].strip() for line in listed.splitlines() if "│ train" in line)
        assert re.fullmatch(r"[0-9a-f]{8}", short)
        shown = sh("jobs", "show", short).stdout
        assert shown.startswith(f"job {short}") and "train on cpu, succeeded" in shown

        evaluated = sh("evaluate", "--adapter", adapter).stdout
        evaluation = re.search(r"evaluation (\d+) of adapter", evaluated).group(1)
        assert "recall" in evaluated and "general retention" in evaluated
        promoted = sh("promote", "--evaluation", evaluation).stdout
        assert re.search(r"promote: (promoted|rejected)", promoted) and "recall (token accuracy)" in promoted

        # A whole cycle on new rows: it ends by saying whether the candidate was promoted, and why not.
        sh("feedback", "import", second.name)
        run = sh("pipeline", "run", "--wait", timeout=600).stdout
        outcome = " ".join(run.split())
        assert re.search(r"pipeline run [0-9a-f]{8}: succeeded — v2 (promoted to production|not promoted: "
                         r"the gate refused it \(.+\))", outcome), run
        run_id = _first_column(sh("pipeline", "list").stdout)[0]
        steps = sh("pipeline", "show", run_id[:6]).stdout
        assert all(step in steps for step in ("export", "fisher", "train", "evaluate", "promote"))

        adapters = sh("adapters", "list").stdout
        assert "default@v1" in adapters and "default@v2" in adapters
        pulled = sh("adapters", "pull", "2", "adapter").stdout
        assert "base model: builtin:tiny" in pulled
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (folder / "adapter").iterdir()}

        sh("config", "show")
        report = sh("report").stdout
        assert "default@v2" in report and (folder / ".continuum" / "report" / "index.html").is_file()
    finally:
        down = sh("down")
    assert "stopped" in down.stdout
