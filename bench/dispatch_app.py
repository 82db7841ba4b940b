"""The worker app of bench/dispatch.py: our Celery app plus one bare no-op task to compare against.

The bare task signals completion with one Redis INCR (a task that leaves no trace cannot be timed);
the ledger job's completion is its own ledger write.
"""

from __future__ import annotations

import os

import redis

from common.settings import load_settings
from workers.celery_app import make_celery

app = make_celery(load_settings().check())
_counter = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])


@app.task(name="bench.noop", acks_late=True, ignore_result=True)
def bare_noop() -> None:
    _counter.incr("bench:bare_done")
