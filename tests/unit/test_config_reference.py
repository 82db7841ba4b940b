"""The README's configuration reference is generated from `Settings` and must match it exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import Settings
from scheduler.config_reference import (
    END_MARKER,
    README_PATH,
    REGENERATE_COMMAND,
    START_MARKER,
    extract_block,
    render_block,
    render_table,
    setting_docs,
    updated_readme,
)

REPO = Path(__file__).resolve().parents[2]


def test_readme_block_matches_the_settings():
    block = extract_block(README_PATH.read_text(encoding="utf-8"))
    assert block is not None, f"README.md has no {START_MARKER} … {END_MARKER} block; run `{REGENERATE_COMMAND}`"
    assert block == render_block(), (
        f"the configuration reference in README.md is out of date with common/settings.py; "
        f"run `{REGENERATE_COMMAND}` and commit the result"
    )


def test_every_settings_field_has_a_row_and_a_help_text():
    table = render_table()
    missing_help = []
    for name, field in Settings.model_fields.items():
        assert f"`CONTINUUM_{name.upper()}`" in table
        if not field.description:
            missing_help.append(name)
    assert not missing_help, f"settings without a description (help text): {missing_help}"


class _Example(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EX_")

    plain: int = Field(3, description="A number.")
    token: SecretStr = Field(SecretStr("hunter2"), description="Never shown.")
    piped: str = Field("a|b", description="Has a | pipe.")
    flag: bool = Field(False, description="Off\nby default.")


def test_rendering_escapes_pipes_hides_secrets_and_keeps_rows_on_one_line():
    rows = render_table(_Example).splitlines()
    assert rows[2] == "| `EX_PLAIN` | int | `3` | A number. |"
    assert rows[3] == "| `EX_TOKEN` | secret | (set) | Never shown. |"
    assert "hunter2" not in "\n".join(rows)
    assert rows[4] == "| `EX_PIPED` | str | `a\\|b` | Has a \\| pipe. |"
    assert rows[5] == "| `EX_FLAG` | bool | `false` | Off by default. |"
    assert [doc.env_var for doc in setting_docs(_Example)] == ["EX_PLAIN", "EX_TOKEN", "EX_PIPED", "EX_FLAG"]


def test_update_replaces_only_the_block_or_appends_a_section():
    stale = f"# t\n\nintro\n\n{START_MARKER}\nold\n{END_MARKER}\n\n## after\n"
    fresh = updated_readme(stale, "NEW")
    assert fresh == "# t\n\nintro\n\nNEW\n\n## after\n"
    appended = updated_readme("# t\n", render_block())
    assert "## Configuration reference" in appended
    assert extract_block(appended) == render_block()


def test_write_command_regenerates_a_stale_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START_MARKER}\nstale\n{END_MARKER}\n", encoding="utf-8")
    run = [sys.executable, "-m", "scheduler.config_reference", "--readme", str(readme)]
    assert subprocess.run([*run, "--check"], cwd=REPO, capture_output=True).returncode == 1
    assert subprocess.run([*run, "--write"], cwd=REPO, capture_output=True).returncode == 0
    assert extract_block(readme.read_text(encoding="utf-8")) == render_block()
    assert subprocess.run([*run, "--check"], cwd=REPO, capture_output=True).returncode == 0


def test_cli_prints_the_reference():
    from typer.testing import CliRunner

    from scheduler.cli import app

    result = CliRunner().invoke(app, ["config", "reference"])
    assert result.exit_code == 0, result.output
    assert result.output == render_table()


def test_cli_show_masks_secrets_and_url_passwords(monkeypatch):
    import json

    from typer.testing import CliRunner

    from scheduler.cli import app

    monkeypatch.setenv("CONTINUUM_DATABASE_URL", "postgresql+psycopg://continuum:pg-S3cret@db/continuum")
    monkeypatch.setenv("CONTINUUM_FLOWER_BASIC_AUTH", "ops:fl-S3cret")
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert "S3cret" not in result.output
    assert shown["CONTINUUM_DATABASE_URL"] == "postgresql+psycopg://continuum:***@db/continuum"
    assert shown["CONTINUUM_FLOWER_BASIC_AUTH"] == "***"
    assert set(shown) == {f"CONTINUUM_{name.upper()}" for name in Settings.model_fields}
