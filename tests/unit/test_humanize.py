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


def test_pipeline_outcome_says_whether_the_candidate_was_promoted_and_why():
    from scheduler.cli.humanize import pipeline_outcome

    done = {"id": "0123456789", "state": "succeeded", "error": None,
            "steps": {"train": {"state": "succeeded", "result": {"version": 4}},
                      "promote": {"state": "succeeded", "result": {"status": "promoted", "alias": "production"}}}}
    assert pipeline_outcome(done) == "pipeline run 01234567: succeeded — v4 promoted to production"
    done["steps"]["promote"]["result"] = {"status": "rejected",
                                         "reason": "gate refused: general retention 0.80 < 0.90"}
    assert pipeline_outcome(done).endswith("v4 not promoted: the gate refused it (general retention 0.80 < 0.90)")
    skipped = {"id": "abcdef0123", "state": "skipped", "steps": {},
               "error": "export skipped: 3 new feedback rows, fewer than the 8 a cycle needs"}
    assert pipeline_outcome(skipped) == ("pipeline run abcdef01: skipped — export skipped: 3 new feedback rows, "
                                         "fewer than the 8 a cycle needs; no adapter trained")
    failed = {"id": "x" * 10, "state": "failed", "error": "boom",
              "steps": {"export": {"state": "succeeded"}, "train": {"state": "failed"}}}
    assert pipeline_outcome(failed) == "pipeline run xxxxxxxx: failed at train — boom"


def test_times_are_shown_to_the_second():
    from datetime import datetime

    from scheduler.cli.humanize import figure

    assert figure(datetime(2026, 12, 2, 14, 2, 55, 185366)) == "2026-12-02 14:02:55"
