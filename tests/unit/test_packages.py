"""`common`, `workers` and `scheduler` are generic names: each must resolve to this repository's code.

A same-named package elsewhere on sys.path (another project, a site-packages install) would silently
shadow ours; these tests fail loudly instead.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ["common", "workers", "scheduler"]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_package_resolves_inside_this_repository(name):
    module = importlib.import_module(name)
    location = Path(module.__file__).resolve()
    assert location == REPO_ROOT / name / "__init__.py", f"{name} imported from {location}, not from {REPO_ROOT}"
    # A namespace package or a split package would have more than one search location.
    assert [Path(p).resolve() for p in module.__path__] == [REPO_ROOT / name]


def test_packages_resolve_here_from_a_fresh_interpreter():
    # The test process may have imported them early via conftest; a clean interpreter started from the
    # repository root (how the CLI and workers run) must agree.
    code = "import json, common, workers, scheduler; print(json.dumps([m.__file__ for m in (common, workers, scheduler)]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    files = [Path(f).resolve() for f in json.loads(out.stdout)]
    assert files == [REPO_ROOT / name / "__init__.py" for name in TOP_LEVEL]


def test_pyproject_lists_exactly_our_packages():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    roots = {pattern.split(".")[0].rstrip("*") for pattern in include}
    assert roots == set(TOP_LEVEL), f"pyproject packages {include} must name exactly {TOP_LEVEL}"
    assert config["project"]["scripts"]["continuum"] == "scheduler.cli:main"


def test_migrations_folder_is_not_a_package():
    # Alembic loads migrations/ by path; an __init__.py would make `migrations` importable and shadowable.
    assert not (REPO_ROOT / "migrations" / "__init__.py").exists()
