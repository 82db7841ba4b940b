"""Job results printed for people: rounded, flattened, never wider than 80 columns."""

from __future__ import annotations

from scheduler.cli.humanize import figure, result_lines


def test_floats_are_rounded_and_nested_results_flattened():
    lines = result_lines({"version": 3, "metrics": {"recall": 0.896551724137931, "loss": 1.2345678e-05},
                          "notes": ["a", "b", "c", "d", "e"], "promoted": True, "fisher_id": None})
    assert lines == ["  version: 3", "  metrics.recall: 0.897", "  metrics.loss: 1.23e-05",
                     "  notes: [a, b, c, d, … (5 in all)]", "  promoted: yes", "  fisher_id: –"]


def test_long_values_are_cut_to_80_columns():
    lines = result_lines({"reason": "x" * 500})
    assert len(lines[0]) == 80 and lines[0].endswith("…")
    assert figure(0.5) == "0.5" and figure(12345.678) == "12,346"
