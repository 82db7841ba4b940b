"""Benchmark: dispatch overhead of the job ledger.

    python bench/dispatch.py            # 1,000 jobs each way
    python bench/dispatch.py --jobs 300

Starts throwaway Postgres, Redis and S3 servers on loopback (tests/support/servers.py) and ONE worker
process (`celery -A bench.dispatch_app worker -Q io`, the io worker's production pool: prefork), then in
the same run, on the same broker and worker:

* bare   — N bare Celery no-op tasks (`bench.noop`), sent back to back; done when all N ran.
* ledger — N `noop` jobs through continuum: ledger INSERT + send, claim (conditional UPDATE, lease),
           inline run with its lease thread, record (guarded UPDATE); done when all N are `succeeded`.

Each side is timed from its first send to its last completion, in alternating rounds (load on a shared
machine drifts; interleaving spreads it over both sides). Target: ledger <= 1.5x bare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.5


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling costs CPU on the same 2 cores; both sides poll alike


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2, help="Worker pool processes (prefork).")
    parser.add_argument("--rounds", type=int, default=10, help="Alternating bare/ledger rounds.")
    args = parser.parse_args()

    import redis
    from sqlalchemy import func, select

    from common.db.engine import session_scope
    from common.db.migrate import upgrade
    from common.db.models import Job
    from common.settings import load_settings
    from tests.support.servers import PostgresServer, RedisServer, S3Server

    # S3 is not touched by no-op jobs; distributed mode insists on shared storage, so it gets one.
    pg, rd, s3 = PostgresServer().start(), RedisServer().start(), S3Server().start()
    home = Path(tempfile.mkdtemp(prefix="continuum-bench-"))
    db_url = pg.create_database("bench")
    upgrade(db_url)
    env = {
        "CONTINUUM_MODE": "distributed", "CONTINUUM_HOME": str(home), "CONTINUUM_DATABASE_URL": db_url,
        "CONTINUUM_BROKER_URL": rd.url, "BENCH_COUNTER_URL": rd.url,
        "CONTINUUM_STORAGE_URL": f"s3://{s3.create_bucket('bench')}/continuum", "CONTINUUM_S3_ENDPOINT_URL": s3.endpoint,
        "CONTINUUM_S3_ACCESS_KEY_ID": s3.access_key, "CONTINUUM_S3_SECRET_ACCESS_KEY": s3.secret_key,
    }
    os.environ.update(env)
    worker = None
    try:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.dispatch_app", "worker", "-Q", "io", "-P", "prefork",
             "-c", str(args.concurrency), "-l", "WARNING", "-E", "--without-mingle", "--without-gossip"],
            cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        settings = load_settings().check()
        from scheduler.producer import enqueue_job
        from workers.celery_app import app_for
        from workers.resources import resources_for

        app = app_for(settings)
        sessions = resources_for(settings).sessions
        counter = redis.Redis.from_url(rd.url)

        def succeeded() -> int:
            with session_scope(sessions) as session:
                return session.scalar(select(func.count()).select_from(Job).where(Job.state == "succeeded"))

        # Warm-up: the worker is up and both paths are hot (connections, imports) before timing.
        app.send_task("bench.noop", queue="io")
        enqueue_job(settings, "noop", {})
        _wait(lambda: int(counter.get("bench:bare_done") or 0) >= 1 and succeeded() >= 1, 120, "warm-up")
        counter.set("bench:bare_done", 0)

        # Alternate the two sides in rounds (bare, ledger, ledger, bare, …): on a shared machine the load
        # drifts, and interleaving spreads the drift over both sides instead of biasing one.
        per_round = max(1, args.jobs // args.rounds)
        bare = ledger = enqueued = 0.0
        bare_done = ledger_done = 0
        for round_no in range(args.rounds):
            order = ("bare", "ledger") if round_no % 2 == 0 else ("ledger", "bare")
            for side in order:
                if side == "bare":
                    target = int(counter.get("bench:bare_done") or 0) + per_round
                    start = time.perf_counter()
                    for _ in range(per_round):
                        app.send_task("bench.noop", queue="io")
                    _wait(lambda: int(counter.get("bench:bare_done") or 0) >= target, 600, "bare tasks")
                    bare += time.perf_counter() - start
                    bare_done += per_round
                else:
                    target = succeeded() + per_round
                    start = time.perf_counter()
                    for i in range(per_round):
                        enqueue_job(settings, "noop", {"i": i})
                    enqueued += time.perf_counter() - start
                    _wait(lambda: succeeded() >= target, 600, "ledger jobs")
                    ledger += time.perf_counter() - start
                    ledger_done += per_round
        args.jobs = bare_done

        report = {
            "jobs": args.jobs,
            "bare_seconds": round(bare, 3),
            "bare_per_second": round(args.jobs / bare, 1),
            "ledger_seconds": round(ledger, 3),
            "ledger_per_second": round(args.jobs / ledger, 1),
            "ledger_enqueue_seconds": round(enqueued, 3),
            "ratio": round(ledger / bare, 3),
            "target_ratio": TARGET_RATIO,
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(report, indent=2))
        print(f"dispatch overhead: {report['ratio']}x bare Celery "
              f"({'meets' if report['ratio'] <= TARGET_RATIO else 'MISSES'} the <= {TARGET_RATIO}x target)")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        rd.stop()
        pg.stop()
        s3.stop()


if __name__ == "__main__":
    main()
