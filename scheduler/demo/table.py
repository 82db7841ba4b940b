"""The demo's per-cycle table: what each round taught, what earlier rounds kept, naive side by side.

Forgetting here is measured from when a round was taught: (accuracy right after its cycle − accuracy
now) / accuracy right after its cycle, the worst over earlier rounds — the number a user cares about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table


@dataclass
class CycleRow:
    round: int
    dataset_id: int
    version: str
    recall_exact: float | None
    recall_token: float | None
    retention: dict[int, float]  # earlier round → token accuracy now
    promoted: str
    naive_retention: dict[int, float] = field(default_factory=dict)
    naive_recall: float | None = None


def forgetting_since_taught(taught: dict[int, float], now: dict[int, float]) -> float | None:
    values = [(taught[r] - acc) / taught[r] for r, acc in now.items() if taught.get(r)]
    return max(values) if values else None


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def cycle_table(rows: list[CycleRow], with_naive: bool) -> tuple[Table, list[dict[str, Any]]]:
    """A Rich table plus the same figures as plain data (for `--json` and the closing summary)."""
    taught: dict[int, float] = {}
    naive_taught: dict[int, float] = {}
    table = Table(title="continual cycles (synthetic made-up facts)", show_lines=False)
    # Short headers: the table must stay readable in an 80-column terminal.
    for column in ("round", "ver", "recall EM", "recall tok", "earlier rounds now", "forgot", "promoted"):
        table.add_column(column, no_wrap=column != "earlier rounds now")
    if with_naive:
        table.add_column("naive recall", style="dim", no_wrap=True)
        table.add_column("naive forgot", style="dim", no_wrap=True)
    data = []
    for row in rows:
        taught[row.round] = row.recall_token or 0.0
        forgetting = forgetting_since_taught(taught, row.retention)
        retention = " ".join(f"R{r}={acc:.2f}" for r, acc in sorted(row.retention.items())) or "–"
        cells = [str(row.round), row.version, _pct(row.recall_exact), _pct(row.recall_token), retention,
                 _pct(forgetting), row.promoted]
        entry = {"round": row.round, "version": row.version, "recall_exact": row.recall_exact,
                 "recall_token": row.recall_token, "retention": row.retention, "forgetting": forgetting,
                 "promoted": row.promoted}
        if with_naive:
            naive_taught[row.round] = row.naive_recall or 0.0
            naive_forgetting = forgetting_since_taught(naive_taught, row.naive_retention)
            cells += [_pct(row.naive_recall), _pct(naive_forgetting)]
            entry.update(naive_recall=row.naive_recall, naive_retention=row.naive_retention,
                         naive_forgetting=naive_forgetting)
        table.add_row(*cells)
        data.append(entry)
    return table, data
