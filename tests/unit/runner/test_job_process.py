"""Job processes forked from the warm fork server and spawned fresh behave the same to the supervisor;
a forked one starts with the job code (torch) already imported and with the supervisor's environment
as it is now, not as it was when the server started."""

from __future__ import annotations

import json

import pytest

from common.db import create_db_engine, session_factory
from common.ledger import Heartbeat, JobLedger
from workers.runner.job_process import FORKSERVER, SPAWN, preload_modules, resolve_start_method
from workers.runner.outcome import OutcomeKind, Supervision
from workers.runner.subprocess_runner import run_in_subprocess


@pytest.fixture
def ledger(tmp_path, monkeypatch, migrated_sqlite_url):
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONTINUUM_DATABASE_URL", migrated_sqlite_url)
    monkeypatch.setenv("CONTINUUM_STORAGE_URL", f"file://{tmp_path / 'objects'}")
    engine = create_db_engine(migrated_sqlite_url)
    yield JobLedger(session_factory(engine))
    engine.dispose()


def _supervision(token: int, cancel_after: int | None = None) -> Supervision:
    beats = {"n": 0}

    def heartbeat(_progress) -> Heartbeat:
        beats["n"] += 1
        return Heartbeat(lease_held=True, cancel_requested=cancel_after is not None and beats["n"] > cancel_after)

    return Supervision(heartbeat=heartbeat, publish_progress=lambda _p: None, shutting_down=lambda: False,
                       heartbeat_seconds=0.1, soft_time_limit=60, hard_time_limit=120, stop_grace_seconds=2,
                       lease_owner="w", lease_token=token, lease_seconds=30)


def _sleep_job(ledger: JobLedger, steps: int = 2, step_seconds: float = 0.05) -> tuple[str, int]:
    job, _ = ledger.create("sleep", {"steps": steps, "step_seconds": step_seconds}, queue="cpu")
    return job.id, ledger.claim(job.id, "w", 60).token


@pytest.mark.parametrize("method", [FORKSERVER, SPAWN])
def test_a_job_runs_to_its_result_either_way(ledger, method):
    job_id, token = _sleep_job(ledger)
    outcome = run_in_subprocess(job_id, _supervision(token), method)
    assert outcome.kind is OutcomeKind.succeeded, outcome.error
    assert outcome.result["steps"] == 2 and outcome.start_method == method
    assert outcome.startup_seconds is not None and outcome.startup_seconds > 0
    # The `sleep` job imports no torch itself: only a fork of the preloaded server has it.
    assert outcome.code_preloaded is (method == FORKSERVER)


@pytest.mark.parametrize("method", [FORKSERVER, SPAWN])
def test_cancel_reaches_the_job_process_either_way(ledger, method):
    job_id, token = _sleep_job(ledger, steps=400, step_seconds=0.05)
    outcome = run_in_subprocess(job_id, _supervision(token, cancel_after=3), method)
    assert outcome.kind is OutcomeKind.cancelled


def test_a_forked_job_reads_the_environment_of_now_not_of_the_servers_start(ledger, tmp_path, monkeypatch):
    first_id, token = _sleep_job(ledger)
    assert run_in_subprocess(first_id, _supervision(token), FORKSERVER).kind is OutcomeKind.succeeded
    # The server is running now; point the object store elsewhere and run a second job.
    monkeypatch.setenv("CONTINUUM_STORAGE_URL", f"file://{tmp_path / 'elsewhere'}")
    second_id, token = _sleep_job(ledger)
    assert run_in_subprocess(second_id, _supervision(token), FORKSERVER).kind is OutcomeKind.succeeded
    checkpoints = [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("checkpoint.json")]
    assert sorted(checkpoints) == ["elsewhere", "objects"]
    written = json.loads(next((tmp_path / "elsewhere").rglob("checkpoint.json")).read_text())
    assert written["step"] == 2


def test_the_server_preloads_the_code_of_every_process_job_kind():
    from workers.kinds import KINDS

    modules = preload_modules()
    for kind in KINDS.values():
        if kind.isolation == "process":
            assert kind.entry.partition(":")[0] in modules
    assert "workers.runner.child" in modules


def test_auto_forks_on_linux_and_spawns_elsewhere(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "platform", "linux")
    assert resolve_start_method("auto") == FORKSERVER and resolve_start_method("spawn") == SPAWN
    monkeypatch.setattr(sys, "platform", "darwin")
    assert resolve_start_method("auto") == SPAWN and resolve_start_method("forkserver") == FORKSERVER


def test_importing_the_preloaded_code_never_asks_for_a_cuda_device():
    """A fork server that touched CUDA would hand its children a CUDA they cannot use: nothing it
    imports may query the device at import time (checked in a fresh interpreter)."""
    import subprocess
    import sys

    probe = """
import importlib, torch
calls = []
for name in ("is_available", "device_count", "_lazy_init", "current_device", "init"):
    original = getattr(torch.cuda, name)
    setattr(torch.cuda, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
from workers.runner.job_process import preload_modules
for module in preload_modules():
    if module != "__main__":
        importlib.import_module(module)
print(sorted(set(calls)), torch.cuda.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[] False", out.stdout + out.stderr
