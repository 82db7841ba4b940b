"""Job results for people: `key: value` lines, numbers rounded, nested results flattened, 80 columns.

`--json` prints the whole result unchanged; this is what a person reads without it.
"""

from __future__ import annotations

from typing import Any

WIDTH = 80
MAX_LIST_ITEMS = 4


def figure(value: Any) -> str:
    """A value as a person reads it: floats to 3 significant digits (whole numbers from 1000 on),
    lists shortened."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
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
