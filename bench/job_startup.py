"""Benchmark: how long an ML job process takes to be ready to work, forked from the warm fork server
versus spawned as a fresh interpreter (issue 10: under 1 s on a warm worker).

    python bench/job_startup.py [--runs 5]

Runs the supervisor (workers.runner.subprocess_runner, as a worker does) on a throwaway embedded home
(SQLite, local object folder). Each job is the `sleep` diagnostic kind with `import_ml_code`: it first
imports what a training job imports when it runs (torch, transformers, peft, the learning code), then
does one 10 ms step. "Ready" = process start → the job's code loaded (measured by the supervisor) +
that import time (measured in the job). The fork server is started before the timed runs, as a worker
does when it comes up ("warm"); its own start (the imports, once per worker) is printed separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _ready_seconds(ledger, method: str) -> tuple[float, float]:
    from common.ledger import Heartbeat
    from workers.runner.outcome import OutcomeKind, Supervision
    from workers.runner.subprocess_runner import run_in_subprocess

    job, _ = ledger.create("sleep", {"steps": 1, "step_seconds": 0.01, "import_ml_code": True}, queue="cpu")
    token = ledger.claim(job.id, "bench", 600).token
    supervision = Supervision(
        heartbeat=lambda _p: Heartbeat(lease_held=True, cancel_requested=False), publish_progress=lambda _p: None,
        shutting_down=lambda: False, heartbeat_seconds=5, soft_time_limit=300, hard_time_limit=330,
        stop_grace_seconds=5, lease_owner="bench", lease_token=token, lease_seconds=600)
    outcome = run_in_subprocess(job.id, supervision, method)
    if outcome.kind is not OutcomeKind.succeeded:
        raise SystemExit(f"{method} job failed: {outcome.error}")
    return outcome.startup_seconds, outcome.result["import_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="continuum-startup-") as tmp:
        for key in [k for k in os.environ if k.startswith("CONTINUUM_")]:
            del os.environ[key]
        os.environ["CONTINUUM_HOME"] = str(Path(tmp) / "home")
        from common.db import create_db_engine, session_factory
        from common.db.migrate import upgrade
        from common.ledger import JobLedger
        from common.settings import load_settings
        from workers.runner.job_process import warm_up

        settings = load_settings()
        upgrade(settings.resolved_database_url)
        ledger = JobLedger(session_factory(create_db_engine(settings.resolved_database_url)))
        started = time.perf_counter()
        warm_up(in_background=False)
        _ready_seconds(ledger, "forkserver")  # waits for the server's imports: its one-off cost
        server_start = time.perf_counter() - started
        rows = {}
        for method in ("spawn", "forkserver"):
            runs = [_ready_seconds(ledger, method) for _ in range(args.runs)]
            rows[method] = runs
    print(f"ML job process start-up, median of {args.runs} (load {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'':24s} {'started':>8s} {'imports':>8s} {'ready':>8s}")
    ready = {}
    for method, runs in rows.items():
        start_s = statistics.median(r[0] for r in runs)
        import_s = statistics.median(r[1] for r in runs)
        ready[method] = statistics.median(r[0] + r[1] for r in runs)
        label = "spawn (fresh process)" if method == "spawn" else "forked from warm server"
        print(f"{label:24s} {start_s:7.2f}s {import_s:7.2f}s {ready[method]:7.2f}s")
    print(f"{'ratio spawn / forked':24s} {ready['spawn'] / ready['forkserver']:25.1f}x")
    print(f"fork server start (once per worker, in the background): {server_start:.2f}s")


if __name__ == "__main__":
    main()
