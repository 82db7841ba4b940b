"""Benchmark: a `continuum promote` round trip from the shell, with and without a live worker.

    python bench/cli_round_trip.py [--runs 3]

Embedded mode in a throwaway home (SQLite, embedded broker, local folder). Times the whole command
`continuum promote --adapter 1 --force --json` (interpreter start, enqueue, the job, the answer):
* before — no worker up: the command starts an embedded worker for its duration, as every command
  did before `continuum up`;
* after  — after `continuum up`: the command reuses the live worker.
Prints the median of `--runs` of each and the ratio before / after (issue 10 target: a command on a
warm worker costs a fraction of one that starts its own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"`continuum {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def _timed(env: dict[str, str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        _cli(env, "promote", "--adapter", "1", "--force", "--json")
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="continuum-rt-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
        env["CONTINUUM_HOME"] = str(Path(tmp) / "home")
        os.environ.update(CONTINUUM_HOME=env["CONTINUUM_HOME"])
        from common.db import create_db_engine, session_factory, session_scope
        from common.db.migrate import upgrade
        from common.db.models import Adapter
        from common.settings import load_settings

        settings = load_settings()
        upgrade(settings.resolved_database_url)
        engine = create_db_engine(settings.resolved_database_url)
        with session_scope(session_factory(engine)) as session:  # promote --force only moves the alias
            session.add(Adapter(name="default", version=1, base_model="builtin:tiny", uri="file://unused",
                                metadata_={"prefix": "adapters/default/none"}))
        engine.dispose()
        before = _timed(env, args.runs)
        up = json.loads(_cli(env, "up", "--json").stdout)
        try:
            after = _timed(env, args.runs)
        finally:
            _cli(env, "down")
    b, a = statistics.median(before), statistics.median(after)
    print(f"continuum promote round trip, median of {args.runs} (load {os.getloadavg()[0]:.1f}; worker pid "
          f"{up['pid']})")
    print(f"{'no worker up (starts its own)':34s} {b:7.2f} s   runs: {', '.join(f'{s:.2f}' for s in before)}")
    print(f"{'after continuum up (reused)':34s} {a:7.2f} s   runs: {', '.join(f'{s:.2f}' for s in after)}")
    print(f"{'ratio before / after':34s} {b / a:7.1f}x")


if __name__ == "__main__":
    main()
