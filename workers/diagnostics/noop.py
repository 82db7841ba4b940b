"""`noop`: does nothing, inline. Measures the cost of the job machinery itself (bench/dispatch.py)."""

from __future__ import annotations

from typing import Any

from workers.context import JobContext


def run(ctx: JobContext) -> dict[str, Any]:
    return {"ok": True, "echo": ctx.params.get("echo")}
