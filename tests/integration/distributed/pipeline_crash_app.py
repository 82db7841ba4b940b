"""Crash points between two writes of the pipeline state machine, for the reconciliation chaos tests.

`CONTINUUM_TEST_PIPELINE_CRASH_AT` names the point; on reaching it the process SIGKILLs itself (no
cleanup, no `finally`: a power cut):

- `after_insert`: the run row is committed, its first step not yet enqueued (run as a script:
  `python -m tests.integration.distributed.pipeline_crash_app start` starts one run and dies);
- `after_cas`: a worker moved the run's `current_step` on by compare-and-set, the next step's job
  is not yet created (use as `celery -A tests.integration.distributed.pipeline_crash_app worker`).

The hook wraps the production `enqueue_step`; nothing in the production code knows about it.
"""

from __future__ import annotations

import os
import signal
import sys

from common.orchestration import pipeline as machine
from common.settings import load_settings
from workers.celery_app import make_celery

CRASH_AT = os.environ.get("CONTINUUM_TEST_PIPELINE_CRASH_AT", "")
if CRASH_AT not in ("after_insert", "after_cas"):
    raise SystemExit(f"CONTINUUM_TEST_PIPELINE_CRASH_AT must be after_insert or after_cas, got {CRASH_AT!r}")

_enqueue_step = machine.enqueue_step


def _enqueue_step_watched(orch, run, step, attempt):
    first = step == machine.STEPS[0]
    if (CRASH_AT == "after_insert" and first) or (CRASH_AT == "after_cas" and not first):
        os.kill(os.getpid(), signal.SIGKILL)
    return _enqueue_step(orch, run, step, attempt)


machine.enqueue_step = _enqueue_step_watched

app = make_celery(load_settings().check())

if __name__ == "__main__" and sys.argv[1:] == ["start"]:
    import json

    from workers.dispatch import orchestrator_for

    params = json.loads(os.environ.get("CONTINUUM_TEST_PIPELINE_PARAMS", "{}"))
    machine.start_pipeline(orchestrator_for(app.continuum_settings, app), params=params)
    raise SystemExit("the crash point was not reached")
