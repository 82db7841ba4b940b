"""The CLI's help reads right at 80 columns: flags do not look as if they took a value, and the recipe
list is complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _help(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "scheduler", *args, "--help"], cwd=REPO, capture_output=True,
                            text=True, env=dict(os.environ, COLUMNS="80"), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", [(), ("train",), ("jobs", "show"), ("pipeline", "run")])
def test_help_fits_80_columns_and_flags_take_no_value(command):
    text = _help(*command)
    assert "<bool>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_recipe_help_names_every_recipe():
    from scheduler.cli.ml import RECIPE_HELP
    from workers.learning.continual import RECIPES

    assert all(name in RECIPE_HELP for name in RECIPES), [n for n in RECIPES if n not in RECIPE_HELP]


def test_the_torch_free_recipe_names_match_the_recipes():
    from common.recipes import RECIPE_NAMES
    from workers.learning.continual import RECIPES

    assert set(RECIPE_NAMES) == set(RECIPES)
