"""The promotion gate: one threshold per measure of the evaluation vocabulary, every reason printed."""

from __future__ import annotations

import pytest

from common.settings import load_settings
from workers.promote.gate import GateThresholds, decide

GOOD = {
    "recall": {"token_accuracy": 0.9, "exact_match": None, "samples": 20},
    "generalisation": {"nll_gain": 0.05},
    "retention": {"1": {"first": 0.9, "now": 0.88, "forgetting": 0.02, "samples": 8}},
    "forgetting_max": 0.02,
    "forgetting_mean": 0.02,
    "general_retention": {"still_right": 0.97, "agreement": 0.9, "kl_drift": 0.01},
    "suppression": {"logprob_drop": 0.4, "rows": 5},
}


def test_a_good_cycle_passes_with_one_reason_per_threshold():
    decision = decide(GOOD)
    assert decision.passed
    assert decision.reasons == [
        "recall (token accuracy) 0.90 >= 0.5",
        "generalisation gain (holdout NLL vs parent) 0.05 >= -0.05",
        "worst forgetting since first taught 0.02 <= 0.1",
        "general retention (base's right answers kept) 0.97 >= 0.9",
        "suppression (thumbs-down log-prob drop) 0.40 >= 0",
    ]


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"recall": {"token_accuracy": 0.3}}, "recall (token accuracy) 0.30 < 0.5 FAIL"),
        ({"generalisation": {"nll_gain": -0.2}}, "generalisation gain (holdout NLL vs parent) -0.20 < -0.05 FAIL"),
        ({"forgetting_max": 0.3}, "worst forgetting since first taught 0.30 > 0.1 FAIL"),
        ({"forgetting_max": 0.1004}, "worst forgetting since first taught 0.1004 > 0.1 FAIL"),
        ({"general_retention": {"still_right": 0.5}}, "general retention (base's right answers kept) 0.50 < 0.9 FAIL"),
        ({"suppression": {"logprob_drop": -0.1, "rows": 3}}, "suppression (thumbs-down log-prob drop) -0.10 < 0 FAIL"),
    ],
)
def test_each_threshold_fails_on_its_own_and_says_why(change, reason):
    decision = decide({**GOOD, **change})
    assert not decision.passed
    assert reason in decision.reasons
    assert sum("FAIL" in r for r in decision.reasons) == 1 and len(decision.reasons) == 5


def test_unmeasured_measures_do_not_block_and_say_so():
    first_cycle = {"recall": {"token_accuracy": 0.7}, "generalisation": {"nll_gain": None}, "retention": {},
                   "forgetting_max": None, "general_retention": {"still_right": None}, "suppression": None}
    decision = decide(first_cycle)
    assert decision.passed
    assert decision.reasons[1:] == [
        "generalisation gain (holdout NLL vs parent) n/a (no holdout rows)",
        "worst forgetting since first taught n/a (no earlier dataset with probe rows)",
        "general retention (base's right answers kept) n/a (not measured, or the base answers no general "
        "question right)",
        "suppression (thumbs-down log-prob drop) n/a (no thumbs-down rows)",
    ]


def test_exact_match_judges_recall_only_when_opted_in_and_measured():
    long_answers = {**GOOD, "recall": {"token_accuracy": 0.95, "exact_match": 0.1}}
    assert decide(long_answers).passed  # default: token accuracy, which works for long answers
    opted = decide(long_answers, GateThresholds(recall_exact_match=True))
    assert not opted.passed and "recall (exact match) 0.10 < 0.5 FAIL" in opted.reasons
    assert decide(GOOD, GateThresholds(recall_exact_match=True)).passed  # no exact match measured: token accuracy


def test_thresholds_come_from_settings_with_job_overrides():
    settings = load_settings(gate_max_forgetting=0.2, gate_min_recall=0.8)
    thresholds = GateThresholds.from_settings(settings, max_forgetting=0.05, min_recall=None)
    assert (thresholds.max_forgetting, thresholds.min_recall) == (0.05, 0.8)
    assert thresholds.min_generalisation_gain == -0.05 and thresholds.min_general_retention == 0.9


def test_an_old_evaluation_row_is_still_read():
    assert not decide({"plasticity": 0.9, "forgetting": 0.3}).passed
    assert decide({"plasticity": 0.9, "forgetting": 0.05}).passed


def test_the_headline_summary_reads_new_and_old_evaluations():
    from workers.evaluate.summary import fmt, summary

    new = summary(GOOD)
    assert (new["recall"], new["forgetting_max"], new["general_retention"], new["suppression"]) == (0.9, 0.02, 0.97, 0.4)
    old = summary({"plasticity": 0.8, "forgetting": 0.3, "kl_drift": 0.5, "exact_match": 0.7})
    assert (old["recall"], old["forgetting_max"], old["forgetting_mean"], old["kl_drift"]) == (0.8, 0.3, None, 0.5)
    assert (fmt(0.12345), fmt(None), fmt(0.0123, 3)) == ("0.12", "–", "0.012")
