"""Benchmark: export N feedback rows from Postgres to an S3-compatible server, ours vs a naive baseline.

    python bench/export.py                      # 100k and 1M rows
    python bench/export.py --sizes 10000,50000  # smaller runs

Starts a throwaway Postgres and moto's S3 server on loopback (tests/support/servers.py), bulk-loads the
rows with COPY, then runs each export in a FRESH subprocess so its peak RSS (VmHWM) is its own:

* ours  — `workers.export.export_feedback`: claim in one transaction, the server renders the shard
          lines and streams them with COPY, gzip into a multipart upload, manifest last.
* naive — fetch every row into a list, build dicts and the whole gzip file in memory, one PUT.

Both write the same shard format at the same gzip level, so the ratio measures the approach. Targets:
ours >= 50k rows/s, and ours' peak RSS at the largest size <= 1.2x that at the smallest.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_ROWS_PER_S = 50_000
TARGET_RSS_RATIO = 1.2


# --------------------------------------------------------------------------------------------------
# Data loading (parent process)
# --------------------------------------------------------------------------------------------------

def _copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def load_rows(database_url: str, count: int, block: int = 50_000) -> float:
    """COPY `count` synthetic rows into `feedback` (10% chat shape, 1/3 thumbs-down, 2% duplicates)."""
    import psycopg

    from common.feedback.schema import content_hash

    started = time.perf_counter()
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    now = datetime.now(timezone.utc).isoformat()
    filler = "lorem ipsum dolor sit amet consectetur " * 3
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY feedback (prompt, response, messages, feedback, content_hash, created_at, received_at) FROM STDIN"
        ) as copy:
            for start in range(0, count, block):
                lines = []
                for i in range(start, min(count, start + block)):
                    n = i - 1 if i % 50 == 49 else i  # every 50th row repeats its neighbour's content
                    prompt = f"Question {n}: what does item {n % 997} do? {filler[: 40 + n % 60]}"
                    response = f"Answer {n}: it does thing {n % 31}. {filler[: 60 + n % 90]}"
                    feedback = "thumbs_down" if n % 3 == 0 else "thumbs_up"
                    if n % 10 == 0:
                        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
                        chash = content_hash(prompt, response, feedback, messages)
                        messages_text = _copy_escape(json.dumps(messages))
                    else:
                        chash = content_hash(prompt, response, feedback)
                        messages_text = "\\N"
                    lines.append(
                        f"{_copy_escape(prompt)}\t{_copy_escape(response)}\t{messages_text}\t{feedback}\t{chash}\t{now}\t{now}\n"
                    )
                copy.write("".join(lines))
        conn.commit()
    return time.perf_counter() - started


# A production-like server: the throwaway cluster's defaults (128 MB shared_buffers, 1 GB max_wal_size)
# make a 1M-row claim spend its time evicting buffers and checkpointing mid-UPDATE.
SERVER_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"}


def tune_postgres(server) -> None:
    """ALTER SYSTEM the settings above and restart the cluster (pg_ctl reuses its start options)."""
    import psycopg

    from tests.support.servers import _binary, _demote_kwargs

    with psycopg.connect(server.url().replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        for name, value in SERVER_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    # -l and DEVNULL: the restarted server must not inherit (and hold open) our pipes.
    subprocess.run(
        [_binary("pg_ctl"), "-D", str(server.root / "data"), "-l", str(server.root / "log"), "-w", "-t", "60", "restart"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_demote_kwargs(),
    )


def reset(database_url: str) -> None:
    """Unclaim every row and drop the datasets, then VACUUM so the next run starts from a clean table."""
    import psycopg

    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE feedback SET dataset_id = NULL WHERE dataset_id IS NOT NULL")
        conn.execute("DELETE FROM datasets")
        conn.execute("VACUUM ANALYZE feedback")
        conn.execute("VACUUM ANALYZE datasets")


# --------------------------------------------------------------------------------------------------
# The two exports (child processes)
# --------------------------------------------------------------------------------------------------

def run_ours(settings, store, compresslevel: int, fetch_rows: int) -> dict:
    from common.db import create_db_engine, session_factory
    from workers.export import ExportConfig, export_feedback

    sessions = session_factory(create_db_engine(settings.database_url))
    config = ExportConfig.create(compresslevel=compresslevel, fetch_rows=fetch_rows, max_rows=10_000_000)
    started = time.perf_counter()
    result = export_feedback(sessions, store, config, f"bench-{os.getpid()}")
    elapsed = time.perf_counter() - started
    return {"claimed": result.claimed, "rows": result.rows, "seconds": elapsed, "phases": result.seconds}


def run_naive(settings, store, compresslevel: int) -> dict:
    """The straightforward version: everything in lists and one bytes object, a watermark to claim."""
    from sqlalchemy import Text, cast, insert, select, update

    from common.db import Dataset, Feedback, create_db_engine, session_factory, session_scope
    from workers.export.shard import split_of

    sessions = session_factory(create_db_engine(settings.database_url))
    fb = Feedback.__table__
    started = time.perf_counter()
    with session_scope(sessions) as session:
        rows = session.execute(
            select(fb.c.id, fb.c.prompt, fb.c.response, cast(fb.c.messages, Text), fb.c.feedback, fb.c.content_hash,
                   fb.c.created_at).where(fb.c.dataset_id.is_(None)).order_by(fb.c.id)
        ).all()
        seen: set[str] = set()
        out = []
        for fid, prompt, response, messages, feedback, chash, created_at in rows:
            if chash in seen:
                continue
            seen.add(chash)
            up = feedback == "thumbs_up"
            out.append(json.dumps({
                "feedback_id": fid, "prompt": prompt, "response": response,
                "messages": json.loads(messages) if messages else None, "feedback": feedback,
                "weight": 2.0 if up else 0.5, "unlikelihood": False, "split": split_of(chash, 10),
                "content_hash": chash, "created_at": created_at.isoformat(),
            }))
        data = gzip.compress(("\n".join(out) + "\n").encode(), compresslevel=compresslevel)
        store.put_bytes("naive/data.jsonl.gz", data)
        dataset_id = session.execute(
            insert(Dataset).values(
                uid=f"naive-{os.getpid()}", uri="naive", manifest_key="naive/manifest.json", num_rows=len(out),
                num_train=0, num_holdout=0, sha256="", schema_version=1, policy={},
            ).returning(Dataset.id)
        ).scalar_one()
        high = rows[-1][0] if rows else 0
        session.execute(update(fb).where(fb.c.dataset_id.is_(None), fb.c.id <= high).values(dataset_id=dataset_id))
    elapsed = time.perf_counter() - started
    return {"claimed": len(rows), "rows": len(out), "seconds": elapsed}


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a
    child would inherit the (large, data-loading) parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def child(args: argparse.Namespace) -> None:
    from common.objectstore.s3 import S3ObjectStore
    from common.settings import load_settings

    settings = load_settings()
    store = S3ObjectStore.from_settings(settings, part_size=args.part_mib << 20)
    rss_before = peak_rss_mib()
    if args.child == "ours":
        outcome = run_ours(settings, store, args.compresslevel, args.fetch_rows)
    else:
        outcome = run_naive(settings, store, args.compresslevel)
    outcome["peak_rss_mib"] = peak_rss_mib()
    outcome["rss_before_mib"] = rss_before
    print(json.dumps(outcome))


def run_child(kind: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--child", kind, "--compresslevel", str(args.compresslevel),
        "--fetch-rows", str(args.fetch_rows), "--part-mib", str(args.part_mib),
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} export failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="Comma-separated row counts (default 100k,1M).")
    parser.add_argument("--compresslevel", type=int, default=1, help="gzip level for both exports (default 1).")
    parser.add_argument("--fetch-rows", type=int, default=5_000, help="Fetch size of ours on SQLite (Postgres streams with COPY).")
    parser.add_argument("--part-mib", type=int, default=8, help="S3 multipart part size in MiB.")
    parser.add_argument("--skip-naive", action="store_true", help="Only run our export.")
    parser.add_argument("--stock-postgres", action="store_true", help="Keep the test cluster's default settings.")
    parser.add_argument("--json-out", help="Also write the results to this JSON file.")
    parser.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from rich.console import Console
    from rich.table import Table

    from common.db.migrate import upgrade
    from tests.support.servers import PostgresServer, S3Server

    console = Console()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    postgres, s3 = PostgresServer().start(), S3Server().start()
    results = []
    try:
        if not args.stock_postgres:
            tune_postgres(postgres)
            console.print(f"postgres settings: {SERVER_SETTINGS}")
        for size in sizes:
            url = postgres.create_database(f"bench_{size}")
            upgrade(url)
            bucket = s3.create_bucket(f"bench-{size}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
            env.update(
                CONTINUUM_DATABASE_URL=url, CONTINUUM_STORAGE_URL=f"s3://{bucket}/continuum",
                CONTINUUM_S3_ENDPOINT_URL=s3.endpoint, CONTINUUM_S3_REGION=s3.region,
                CONTINUUM_S3_ACCESS_KEY_ID=s3.access_key, CONTINUUM_S3_SECRET_ACCESS_KEY=s3.secret_key,
                CONTINUUM_HOME=str(postgres.root / "home"), PYTHONPATH=str(REPO),
            )
            with console.status(f"loading {size:,} rows with COPY"):
                load_seconds = load_rows(url, size)
                reset(url)
            console.print(f"loaded {size:,} rows in {load_seconds:.1f}s")
            with console.status(f"ours: exporting {size:,} rows"):
                ours = run_child("ours", env, args)
            console.print(f"ours  {size:,}: {ours}")
            naive = None
            if not args.skip_naive:
                reset(url)
                with console.status(f"naive: exporting {size:,} rows"):
                    naive = run_child("naive", env, args)
                console.print(f"naive {size:,}: {naive}")
            results.append({"size": size, "ours": ours, "naive": naive})
    finally:
        s3.stop()
        postgres.stop()

    table = Table(title=f"export: Postgres → S3 (moto), gzip level {args.compresslevel}, parts {args.part_mib} MiB")
    columns = ("rows", "ours rows/s", "ours claim s", "ours peak RSS MiB", "naive rows/s", "naive peak RSS MiB",
               "speed ×", "RSS ÷")
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        ours, naive = r["ours"], r["naive"]
        ours_rate = ours["claimed"] / ours["seconds"]
        r["ours_rows_per_s"] = ours_rate
        # The claim (UPDATE … SET dataset_id on every row) is database time both exports pay.
        row = [f"{r['size']:,}", f"{ours_rate:,.0f}", f"{ours['phases']['claim']:.1f}", f"{ours['peak_rss_mib']:.0f}"]
        if naive:
            naive_rate = naive["claimed"] / naive["seconds"]
            r["naive_rows_per_s"] = naive_rate
            row += [f"{naive_rate:,.0f}", f"{naive['peak_rss_mib']:.0f}", f"{ours_rate / naive_rate:.2f}",
                    f"{naive['peak_rss_mib'] / ours['peak_rss_mib']:.2f}"]
        else:
            row += ["-", "-", "-", "-"]
        table.add_row(*row)
    console.print(table)
    slowest = min(r["ours_rows_per_s"] for r in results)
    rss_ratio = results[-1]["ours"]["peak_rss_mib"] / results[0]["ours"]["peak_rss_mib"]
    console.print(
        f"ours: slowest {slowest:,.0f} rows/s (target >= {TARGET_ROWS_PER_S:,}: "
        f"{'met' if slowest >= TARGET_ROWS_PER_S else 'MISSED'}); peak RSS {results[-1]['size']:,} / "
        f"{results[0]['size']:,} rows = {rss_ratio:.2f}x (target <= {TARGET_RSS_RATIO}x: "
        f"{'met' if rss_ratio <= TARGET_RSS_RATIO else 'MISSED'})"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
