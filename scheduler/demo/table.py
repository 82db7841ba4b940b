"""The demo's per-cycle table: what each round taught, what earlier rounds kept, naive side by side.

The figures are the evaluate job's, in its vocabulary: *recall* is token accuracy on the rows the
round taught; *forgetting* is the worst (first taught − now) / first taught over earlier rounds,
scored on their probe rows (taught once, never replayed); *general* is general retention, the share
of general questions the base model answers right that the version still answers right ("–" when
the base answers none, as the random tiny model does). Rounded to 2 decimals; fits 80 columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

WIDTH = 80  # the table must stay readable in an 80-column terminal (tests render it at this width)


@dataclass
class CycleRow:
    round: int
    dataset_id: int
    version: str
    recall: float | None
    forgetting: float | None  # worst since first taught, over earlier rounds
    general_retention: float | None
    retention: dict[int, float | None]  # earlier round → token accuracy on its probe rows now
    promoted: str
    exact_match: float | None = None
    naive_recall: float | None = None
    naive_forgetting: float | None = None
    naive_retention: dict[int, float | None] = field(default_factory=dict)


def _fig(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def cycle_table(rows: list[CycleRow], with_naive: bool) -> tuple[Table, list[dict[str, Any]]]:
    """A Rich table plus the same figures as plain data (for `--json` and the closing summary)."""
    table = Table(title="continual cycles (synthetic made-up facts)", show_lines=False, pad_edge=False)
    # Two-line headers keep the columns narrow; only "earlier rounds now" may wrap (one round per line).
    columns = ["round\nver", "recall", "forgot", "general", "earlier\nrounds now", "promoted"]
    if with_naive:
        columns += ["naive\nrecall", "naive\nforgot"]
    for column in columns:
        wraps = column.startswith("earlier")
        table.add_column(column, no_wrap=not wraps, min_width=7 if wraps else None,
                         style="dim" if column.startswith("naive") else None)
    data = []
    for row in rows:
        retention = " ".join(f"R{r}={_fig(acc)}" for r, acc in sorted(row.retention.items())) or "–"
        cells = [f"{row.round} {row.version}", _fig(row.recall), _fig(row.forgetting), _fig(row.general_retention),
                 retention, {"rejected": "no"}.get(row.promoted, row.promoted)]
        entry: dict[str, Any] = {
            "round": row.round, "version": row.version, "recall": row.recall, "exact_match": row.exact_match,
            "forgetting": row.forgetting, "general_retention": row.general_retention, "retention": row.retention,
            "promoted": row.promoted,
        }
        if with_naive:
            cells += [_fig(row.naive_recall), _fig(row.naive_forgetting)]
            entry.update(naive_recall=row.naive_recall, naive_forgetting=row.naive_forgetting,
                         naive_retention=row.naive_retention)
        table.add_row(*cells)
        data.append(entry)
    return table, data


CAPTION = (
    "recall = token accuracy on this round's facts; forgetting = worst drop of an earlier round since it "
    "was first taught, on rows never replayed; general = the base model's right answers to general "
    "questions still right (– when the base answers none); earlier rounds now = token accuracy on "
    "their never-replayed rows; promoted no = the promotion gate refused it."
)
