"""THE experiment (issue 3, proven by effect #2): facts A, then disjoint facts B, naive vs DEFAULT recipe.

The naive recipe (plain continued LoRA) forgets A heavily; the DEFAULT continual recipe keeps forgetting
of A <= 0.05 while its accuracy on B stays >= 0.95 of the naive recipe's.
"""

from __future__ import annotations

import pytest

from workers.learning.continual import DEFAULT, NAIVE
from workers.learning.two_task import ExperimentSettings, run_two_task

SETTINGS = ExperimentSettings(facts_per_set=40, epochs=40, learning_rate=2e-3, seed=0)


@pytest.mark.slow  # ~1-2.5 min on 2 shared cores: three training runs of 40 epochs
def test_default_recipe_keeps_a_while_learning_b():
    naive, default = run_two_task({"naive": NAIVE, "default": DEFAULT}, SETTINGS)
    assert naive.a_before >= 0.9  # A was learnt before B came
    assert naive.forgetting_a >= 0.4  # the naive recipe forgets A heavily
    assert default.forgetting_a <= 0.05
    assert default.b_after >= 0.95 * naive.b_after


@pytest.mark.slow  # two training runs of 40 epochs on the tiny model
def test_nested_tiers_forget_less_than_naive():
    """Issue 11: the slow tiers of the `nested` recipe hold A better than plain continued LoRA."""
    from workers.learning.continual import RECIPES

    naive, nested = run_two_task({"naive": NAIVE, "nested": RECIPES["nested"]}, SETTINGS)
    print(f"forgetting of A: naive {naive.forgetting_a:.3f}, nested {nested.forgetting_a:.3f}; "
          f"B: naive {naive.b_after:.3f}, nested {nested.b_after:.3f}")
    assert nested.forgetting_a < naive.forgetting_a
