"""Job results for people: `key: value` lines, numbers rounded, nested results flattened, 80 columns.

`--json` prints the whole result unchanged; this is what a person reads without it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

WIDTH = 80
MAX_LIST_ITEMS = 4


def figure(value: Any) -> str:
    """A value as a person reads it: floats to 3 significant digits (whole numbers from 1000 on), times
    to the second, lists shortened."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")  # to the second: microseconds are noise to a person
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(figure(v) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)} in all)" if len(value) > MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def result_lines(result: dict[str, Any], width: int = WIDTH) -> list[str]:
    """One `key: value` line per (flattened) entry, cut with … to `width` columns."""
    lines = []
    for key, value in _flatten(result):
        line = f"  {key}: {figure(value)}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return lines


def pipeline_outcome(status: dict[str, Any]) -> str:
    """What a finished pipeline run did, in one sentence: promoted or not and why, skipped and why,
    or where it failed."""
    steps = status.get("steps") or {}
    state, error = status.get("state"), status.get("error")
    head = f"pipeline run {str(status.get('id', ''))[:8]}: {state}"
    if state == "skipped":
        return f"{head} — {error or 'nothing to do'}; no adapter trained"
    if state in ("failed", "cancelled"):
        failed = next((s for s, info in steps.items() if info.get("state") in ("failed", "cancelled")), None)
        return f"{head}" + (f" at {failed}" if failed else "") + (f" — {error}" if error else "")
    promote = (steps.get("promote") or {}).get("result") or {}
    train = (steps.get("train") or {}).get("result") or {}
    version = f"v{train['version']}" if train.get("version") is not None else f"adapter {promote.get('adapter_id', '?')}"
    outcome = promote.get("status")
    if outcome == "promoted":
        return f"{head} — {version} promoted to {promote.get('alias', 'production')}"
    if outcome == "rejected":
        reasons = str(promote.get("reason") or "").removeprefix("gate refused: ")
        return f"{head} — {version} not promoted: the gate refused it ({reasons})"
    if outcome:
        return f"{head} — {version} {outcome}: {promote.get('reason', '')}".rstrip(": ")
    return head
