"""Slow tests on the real SmolLM2-135M-Instruct (fetched once, see tests/support/real_model.py)."""

from __future__ import annotations

import pytest

from tests.support.real_model import real_model_dir
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="session")
def real_model_path():
    return real_model_dir()
