"""The configuration reference: a Markdown table generated from `Settings`, kept in the README.

The settings class is the single source of truth for configuration; this module renders it (env var,
type, default, help text) so the documentation cannot drift. A unit test compares the README block
with `render_block()`; after adding a setting, regenerate the block with

    python -m scheduler.config_reference --write
"""

from __future__ import annotations

import argparse
import enum
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"
HEADING = "## Configuration reference"
README_PATH = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE_COMMAND = "python -m scheduler.config_reference --write"


@dataclass(frozen=True)
class SettingDoc:
    """One row of the reference: what to set, of which type, its default and what it does."""

    env_var: str
    type_name: str
    default: str
    help: str


def env_var_name(field_name: str, field: FieldInfo, prefix: str) -> str:
    """The environment variable pydantic-settings reads for a field (an explicit alias wins)."""
    alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
    return alias.upper() if alias else f"{prefix}{field_name}".upper()


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " | ".join(str(member.value) for member in annotation)
        if annotation is SecretStr:
            return "secret"
        return annotation.__name__
    # Unions and generics: `str | None`, `list[str]` — their repr is readable enough.
    return str(annotation).replace("typing.", "")


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        # Never print a secret, even a default one; say only whether one is set.
        return "(empty)" if not value.get_secret_value() else "(set)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        value = str(value).lower()
    text = str(value)
    return f"`{text}`" if text else "(empty)"


def _cell(text: str) -> str:
    """Table cells are one line; a literal `|` would split the column."""
    return " ".join(text.split()).replace("|", "\\|")


def setting_docs(settings_cls: type | None = None) -> list[SettingDoc]:
    """Every field of `Settings`, in declaration order."""
    if settings_cls is None:
        from common.settings import Settings as settings_cls  # noqa: N813 - the default class

    prefix = settings_cls.model_config.get("env_prefix", "")
    docs = []
    for name, field in settings_cls.model_fields.items():
        docs.append(
            SettingDoc(
                env_var=env_var_name(name, field, prefix),
                type_name=_type_name(field.annotation),
                default=_default_text(field),
                help=field.description or "",
            )
        )
    return docs


def render_table(settings_cls: type | None = None) -> str:
    """The Markdown table of every setting."""
    lines = ["| Variable | Type | Default | What it does |", "| --- | --- | --- | --- |"]
    for doc in setting_docs(settings_cls):
        row = [f"`{doc.env_var}`", _cell(doc.type_name), _cell(doc.default), _cell(doc.help)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def render_block(settings_cls: type | None = None) -> str:
    """The README block: markers around a note saying it is generated, and the table."""
    return (
        f"{START_MARKER}\n"
        f"<!-- generated from common/settings.py by `{REGENERATE_COMMAND}`; do not edit by hand -->\n\n"
        f"{render_table(settings_cls)}\n"
        f"{END_MARKER}"
    )


def extract_block(readme_text: str) -> str | None:
    """The README's current block (markers included), or None when the markers are missing."""
    start = readme_text.find(START_MARKER)
    end = readme_text.find(END_MARKER, start + 1)
    if start < 0 or end < 0:
        return None
    return readme_text[start : end + len(END_MARKER)]


def updated_readme(readme_text: str, block: str) -> str:
    """The README with its block replaced, or a new section appended when it has none yet."""
    current = extract_block(readme_text)
    if current is not None:
        return readme_text.replace(current, block, 1)
    intro = "Every setting is an environment variable (or a line in `.env`)."
    return readme_text.rstrip("\n") + f"\n\n{HEADING}\n\n{intro}\n\n{block}\n"


def write_readme(path: Path = README_PATH) -> bool:
    """Regenerate the README block in place; returns whether the file changed."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# continuum\n"
    new_text = updated_readme(text, render_block())
    if new_text == text:
        return False
    path.write_text(new_text, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print or update the configuration reference.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="Regenerate the block in README.md.")
    group.add_argument("--check", action="store_true", help="Exit 1 when README.md is out of date.")
    parser.add_argument("--readme", type=Path, default=README_PATH, help="README to read or update.")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_readme(args.readme)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
        return 0
    if args.check:
        text = args.readme.read_text(encoding="utf-8") if args.readme.exists() else ""
        if extract_block(text) != render_block():
            print(f"{args.readme}: configuration reference is out of date; run `{REGENERATE_COMMAND}`")
            return 1
        print(f"{args.readme}: configuration reference is up to date")
        return 0
    sys.stdout.write(render_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
