"""`continuum model init-tiny PATH` writes a model stock transformers loads, identical per seed."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from scheduler.cli import app
from workers.learning.tiny import build_tiny_model


def test_init_tiny_writes_a_loadable_seeded_model(tmp_path):
    result = CliRunner().invoke(app, ["model", "init-tiny", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    expected = build_tiny_model(3).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())

    bad = CliRunner().invoke(app, ["model", "init-tiny", str(tmp_path / "x"), "--size", "huge"])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
