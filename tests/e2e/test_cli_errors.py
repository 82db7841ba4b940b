"""CLI errors a new user meets: one clear line naming the fix, a non-zero exit, no traceback unless --debug.

Every case runs the real `python -m scheduler` in a subprocess against real failures (a closed loopback
port, a missing directory, an empty database), nothing simulated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.distributed.harness import REPO
from tests.support.servers import free_port


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=REPO, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exactly one line (on stderr) that contains every needle; stdout is clean."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n" + "\n".join(lines)
    assert result.stderr.strip() == lines[0] and lines[0].startswith("error: ")
    assert "Traceback" not in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _distributed_env(db_port: int, broker_port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "CONTINUUM_MODE": "distributed",
        "CONTINUUM_DATABASE_URL": f"postgresql+psycopg://continuum:Not-A-Default-pw9@127.0.0.1:{db_port}/continuum",
        "CONTINUUM_BROKER_URL": f"redis://:Not-A-Default-pw9@127.0.0.1:{broker_port}/0",
        # s3 (distributed mode refuses a local folder); never reached: the database fails first.
        "CONTINUUM_STORAGE_URL": "s3://continuum-test/objects",
        "CONTINUUM_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "CONTINUUM_S3_ACCESS_KEY_ID": "test-access-key",
        "CONTINUUM_S3_SECRET_ACCESS_KEY": "Not-A-Default-pw9",
    }


@pytest.mark.parametrize("command", [["jobs", "list"], ["adapters", "list", "--json"], ["pipeline", "list"]])
def test_unreachable_database(command, tmp_path):
    env = _distributed_env(free_port(), free_port(), tmp_path)
    line = _one_error_line(_cli(*command, env=env), "database unreachable", "CONTINUUM_DATABASE_URL")
    assert "Not-A-Default-pw9" not in line  # the password never reaches the terminal


def test_unreachable_database_on_migrate_hides_the_password(tmp_path):
    env = _distributed_env(free_port(), free_port(), tmp_path)
    line = _one_error_line(_cli("db", "upgrade", env=env), "CONTINUUM_DATABASE_URL", "Connection refused")
    assert "Not-A-Default-pw9" not in line


def test_debug_shows_the_traceback(tmp_path):
    env = _distributed_env(free_port(), free_port(), tmp_path)
    result = _cli("--debug", "jobs", "list", env=env)
    assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr
    assert "DatabaseUnavailable" in result.stderr


def test_unreachable_broker(tmp_path):
    # Embedded database (reachable), a Redis broker on a closed port: sending the job must fail fast and clearly.
    env = {"CONTINUUM_BROKER_URL": f"redis://:pw@127.0.0.1:{free_port()}/0"}
    result = _cli("pipeline", "run", env=env, timeout=60)
    line = _one_error_line(result, "broker unreachable", "CONTINUUM_BROKER_URL", "stays queued")
    job_id = line.split("job ")[-1].split()[0]
    # The job row was committed before the send: it is queued, for the reaper to send again.
    shown = _cli("jobs", "show", job_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "queued"


def test_missing_model_path_on_init(tmp_path):
    env = {"CONTINUUM_BASE_MODEL": str(tmp_path / "no-such-model")}
    _one_error_line(_cli("init", env=env), "CONTINUUM_BASE_MODEL", "no config.json", "unset it")


@pytest.mark.slow
def test_missing_model_path_fails_the_train_job_with_the_fix(tmp_path):
    """Through the real embedded worker: the job fails (not retried forever) and the CLI says why in one line."""
    env = {"CONTINUUM_BASE_MODEL": "/nonexistent/base-model"}
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text("".join(json.dumps({"prompt": f"q{i}?", "response": f"a{i}", "feedback": "thumbs_up"}) + "\n"
                                for i in range(4)))
    assert _cli("feedback", "import", str(feedback), env=env).returncode == 0
    exported = _cli("export", "--json", env=env)
    assert exported.returncode == 0, exported.stderr
    dataset_id = json.loads(exported.stdout)["dataset_id"]
    result = _cli("train", "--dataset", str(dataset_id), "--json", env=env, timeout=240)
    line = _one_error_line(result, "train job", "failed", "CONTINUUM_BASE_MODEL='/nonexistent/base-model'",
                           "no config.json")
    job_id = line.split("train job ")[1].split()[0]
    job = json.loads(_cli("jobs", "show", job_id, "--json").stdout)
    assert job["state"] == "failed" and job["attempts"] == 1  # a permanent error: not retried


def test_unknown_adapter(tmp_path):
    _one_error_line(_cli("adapters", "show", "999"), "adapter 999 does not exist", "continuum adapters list")
    _one_error_line(_cli("adapters", "show", "999", "--json"), "adapter 999 does not exist")


def test_missing_or_malformed_feedback_file(tmp_path):
    _one_error_line(_cli("feedback", "import", str(tmp_path / "missing.jsonl")), "does not exist", "check the path")
    _one_error_line(_cli("feedback", "import", str(tmp_path)), "is not a file")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"{not json\n\xff\xfe\n")
    result = _cli("feedback", "import", str(garbage), "--json")
    # The summary (JSON) still goes to stdout for scripts; the one error line goes to stderr.
    assert result.returncode == 1 and json.loads(result.stdout)["quarantined"] == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: no valid feedback row in {str(garbage)!r} (2 quarantined): fix the rows and import again"
    ]


def test_usage_errors_name_the_option():
    result = _cli("adapters", "show", "not-a-number")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "Invalid value for 'adapter_id'" in result.stderr and "--help" in result.stderr


def test_an_uncached_hub_id_names_the_real_fix(tmp_path):
    """continuum never downloads a model at run time: the fix is to fetch it elsewhere and register it
    (not `model init-tiny`, which would write a random tiny model under the hub's name)."""
    env = {"CONTINUUM_BASE_MODEL": "nobody-continuum/not-a-real-model", "HF_HOME": str(tmp_path / "hf")}
    line = _one_error_line(_cli("init", env=env), "not in the local Hugging Face cache",
                           "hf download nobody-continuum/not-a-real-model", "continuum model add")
    assert "init-tiny" not in line


def test_job_and_run_ids_are_taken_by_unique_prefix(tmp_path):
    """Tables show 8-character ids; `jobs show` takes any unique start of an id (git-style)."""
    env = {"CONTINUUM_BROKER_URL": f"redis://:pw@127.0.0.1:{free_port()}/0"}  # jobs stay queued
    line = _cli("pipeline", "run", env=env, timeout=60).stderr
    job_id = line.split("job ")[-1].split()[0]
    listing = _cli("jobs", "list", env=dict(env, COLUMNS="80"))
    assert job_id[:8] in listing.stdout and job_id not in listing.stdout
    shown = _cli("jobs", "show", job_id[:8], "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job_id
    _one_error_line(_cli("jobs", "show", job_id[:2], env=env), "too short", "at least 4")
    _one_error_line(_cli("jobs", "show", "zzzzzzzz", env=env), "no job 'zzzzzzzz'", "continuum jobs list")
    runs = json.loads(_cli("pipeline", "list", "--json", env=env).stdout)
    shown_run = _cli("pipeline", "show", runs[0]["id"][:8], "--json", env=env)
    assert shown_run.returncode == 0 and json.loads(shown_run.stdout)["id"] == runs[0]["id"], shown_run.stderr


@pytest.mark.parametrize("args, env, needles", [
    (["train", "--dataset", "999"], {}, ["dataset 999 does not exist", "continuum datasets list"]),
    (["train", "--dataset", "1"], {"CONTINUUM_RECIPE": "ewc"}, ["CONTINUUM_RECIPE", "unknown recipe 'ewc'", "ewc_lora"]),
    (["train", "--dataset", "1"], {"CONTINUUM_DEVICE": "gpu"}, ["CONTINUUM_DEVICE", "'cpu'"]),
    (["train", "--dataset", "999", "--no-wait"], {}, ["dataset 999 does not exist"]),
    (["evaluate", "--adapter", "42"], {}, ["adapter 42 does not exist", "continuum adapters list"]),
    (["train", "--dataset", "1", "--recipe", "ewc"], {}, ["unknown recipe 'ewc'"]),
])
def test_bad_job_parameters_are_refused_before_anything_is_written(args, env, needles):
    """At enqueue time, before a worker is started: no job row is written (and so no message)."""
    _one_error_line(_cli(*args, env=env), *needles)
    listed = _cli("jobs", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout


@pytest.mark.parametrize("args", [["train", "--dataset", "1"], ["pipeline", "run", "--wait"], ["export"]])
def test_an_unreachable_broker_is_one_line_naming_the_setting_before_any_job(args, tmp_path):
    """Embedded database, a Redis broker on a closed port: no two-minute wait for a worker that cannot
    start; the job row is not written either."""
    from common.db import create_db_engine, session_factory, session_scope
    from common.db.migrate import upgrade
    from common.db.models import Dataset
    from common.settings import load_settings

    settings = load_settings()
    upgrade(settings.resolved_database_url)
    engine = create_db_engine(settings.resolved_database_url)
    with session_scope(session_factory(engine)) as session:  # a dataset, so train passes its own checks
        session.add(Dataset(uid="u", kind="feedback", uri="", manifest_key="m", num_rows=1, num_train=1,
                            num_holdout=0, num_duplicates=0, num_skipped=0, sha256="", schema_version=1,
                            policy={}))
    engine.dispose()
    env = {"CONTINUUM_BROKER_URL": f"redis://:pw@127.0.0.1:{free_port()}/0"}
    _one_error_line(_cli(*args, env=env, timeout=60), "broker unreachable", "CONTINUUM_BROKER_URL")
    listed = _cli("jobs", "list", "--json")
    assert json.loads(listed.stdout) == [] or args[0] == "pipeline", listed.stdout


def test_an_unreachable_object_store_is_one_line_naming_the_setting(tmp_path):
    env = {"CONTINUUM_STORAGE_URL": "s3://continuum-test/objects",
           "CONTINUUM_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
           "CONTINUUM_S3_ACCESS_KEY_ID": "test-access-key", "CONTINUUM_S3_SECRET_ACCESS_KEY": "Not-A-Default-pw9"}
    _one_error_line(_cli("export", env=env, timeout=60), "cannot reach S3", "CONTINUUM_S3_ENDPOINT_URL")
