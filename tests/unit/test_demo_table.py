"""The demo table: the evaluation's vocabulary, figures rounded to 2 decimals, readable at 80 columns."""

from __future__ import annotations

import io

from rich.console import Console

from scheduler.demo.table import WIDTH, CycleRow, cycle_table


def _rows() -> list[CycleRow]:
    return [
        CycleRow(1, 1, "v1", recall=0.912345, forgetting=None, general_retention=0.987654, retention={},
                 promoted="yes", naive_recall=0.93, naive_forgetting=None),
        CycleRow(2, 2, "v2", recall=0.88, forgetting=0.041234, general_retention=0.95, retention={1: 0.871234},
                 promoted="rejected", naive_recall=0.97, naive_forgetting=0.61, naive_retention={1: 0.3}),
        CycleRow(3, 3, "v3", recall=0.9, forgetting=0.125, general_retention=None, retention={1: 0.85, 2: 0.8},
                 promoted="yes", naive_recall=0.96, naive_forgetting=0.7, naive_retention={1: 0.2, 2: 0.3}),
    ]


def _render(with_naive: bool) -> list[str]:
    table, _ = cycle_table(_rows(), with_naive=with_naive)
    buffer = io.StringIO()
    Console(file=buffer, width=WIDTH, color_system=None, legacy_windows=False).print(table)
    return buffer.getvalue().splitlines()


def test_the_table_fits_80_columns_with_every_figure_whole():
    for with_naive in (True, False):
        lines = _render(with_naive)
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)
        text = "\n".join(lines)
        # Figures are rounded to 2 decimals and never folded across lines.
        for figure in ("0.91", "0.99", "0.04", "0.12", "R1=0.87", "1 v1", "│ no "):
            assert figure in text, (figure, text)
        assert "0.912" not in text and "0.0412" not in text and "…" not in text
        assert "R2=0.80" in text  # the earlier-rounds column wraps between rounds, never inside a figure
        if with_naive:
            assert "0.61" in text and "0.70" in text


def test_the_columns_use_the_evaluation_vocabulary():
    text = "\n".join(_render(True)).replace("\n", " ")
    for word in ("recall", "forgot", "general", "naive"):
        assert word in text
    assert "plasticity" not in text.lower()
    _, data = cycle_table(_rows(), with_naive=True)
    assert data[1]["forgetting"] == 0.041234 and data[2]["general_retention"] is None
    assert data[0]["forgetting"] is None  # a first round has nothing to forget: not 0.0
