"""The `export` job entry: job params (ExportConfig overrides) → `export_feedback` → a JSON result.

Thin on purpose: the claim / upload / finalise steps live in logic.py; the job's fenced finish rides
in the finalising transaction, so a cancelled or stale export records nothing. The result's `status` is
"exported" or "skipped" (too few new rows: the pipeline then ends `skipped` without training).
"""

from __future__ import annotations

from typing import Any

from workers.context import JobContext
from workers.export.config import ExportConfig
from workers.export.logic import export_feedback


def run(ctx: JobContext) -> dict[str, Any]:
    config = ExportConfig.from_settings(ctx.settings, **ctx.params)
    result = export_feedback(
        ctx.sessions,
        ctx.store,
        config,
        ctx.job_id,
        progress=lambda done, total: ctx.report_progress({"step": done, "total": total, "stage": "export"}),
        finish=lambda session, result: ctx.finish(session, result),  # fenced, in the finalising commit
        attempt_prefix=ctx.attempt_prefix,
    )
    return result.as_dict()
