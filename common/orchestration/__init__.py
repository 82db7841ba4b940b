"""Orchestration: enqueueing, the pipeline state machine, the reconciliation sweep and the reaper.

It sits between `common/` (settings, database, ledger) and `workers/`: it needs only the job ledger
and a `JobSender` (anything that can put `{"job_id": …}` on a queue — `workers.dispatch.CelerySender`
in production). No Celery, no torch, no `workers`/`scheduler` imports: an import-contract test
(tests/unit/test_import_contract.py) keeps it so.
"""

from common.orchestration.context import JobSender, Orchestrator

__all__ = ["JobSender", "Orchestrator"]
