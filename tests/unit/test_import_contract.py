"""The layering contract (issue 9, GUIDE §2), checked over every module, lazy imports included:

    common/ (no Celery, no torch)  ←  common.orchestration  ←  workers/  ←  scheduler/

`common` imports neither Celery/kombu nor torch/transformers/peft nor `workers`/`scheduler`;
`workers` never imports `scheduler`; nothing but `scheduler` itself (and tests/benchmarks) imports
`scheduler`. An AST walk, not an import: a function-level import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "workers", "scheduler", "migrations")
FORBIDDEN = {
    "common": {"celery", "kombu", "torch", "transformers", "peft", "workers", "scheduler"},
    "workers": {"scheduler"},
    "migrations": {"scheduler", "workers", "celery", "torch"},
}


def imported_modules(source: str) -> set[str]:
    """Every absolute module name `source` imports, at any depth (relative imports stay in-package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def violations(package: str, files: list[Path]) -> list[str]:
    banned = FORBIDDEN.get(package, set())
    problems = []
    for path in files:
        for module in sorted(imported_modules(path.read_text())):
            if module.split(".")[0] in banned:
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
    return problems


def _files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downward(package):
    files = _files(package)
    assert files, f"no modules found under {package}/"
    assert violations(package, files) == []


def test_the_check_sees_lazy_imports_inside_functions():
    source = "def f():\n    from scheduler.pipeline import advance_pipeline\n    import celery.app\n"
    assert imported_modules(source) == {"scheduler.pipeline", "celery.app"}


def test_orchestration_is_free_of_celery_and_workers():
    files = sorted((ROOT / "common" / "orchestration").glob("*.py"))
    assert {p.name for p in files} >= {"enqueue.py", "pipeline.py", "reconcile.py", "reaper.py", "context.py"}
    assert violations("common", files) == []
