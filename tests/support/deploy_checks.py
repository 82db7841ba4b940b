"""Static checks shared by the deployment-file tests: compose-style interpolation and CLI resolution.

Docker does not run here, so the deployment files are checked for what can be known without it: each
`continuum …` command they run exists in the real CLI (with the options it passes), each variable they
set is a real setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(KeyError):
    """A `${VAR:?message}` whose variable is unset or empty."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Docker compose's interpolation: `$$`, `${V}`, `${V:-default}`, `${V-default}`, `${V:?err}`, `${V?err}`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if empty else value  # type: ignore[return-value]
        if op in (":?", "?") and empty:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(replace, text)


def interpolate_tree(node, env: dict[str, str]):
    """Interpolate every string value of a parsed compose file (compose leaves keys and comments alone)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    return interpolate(node, env) if isinstance(node, str) else node


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


def required_variables(tree) -> set[str]:
    """Names used as `${VAR:?…}` / `${VAR?…}` in a parsed file: compose refuses to start without them."""
    return {m.group("name") for text in _strings(tree) for m in _VAR.finditer(text) if m.group("op") in (":?", "?")}


def parse_env_file(text: str) -> dict[str, str]:
    """`KEY=value` lines (comments and blanks skipped, surrounding quotes dropped)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r}"
        env[key.strip()] = value.strip().strip('"').strip("'")
    return env


def environment_dict(environment: dict | list | None) -> dict[str, str]:
    """A service's `environment:` in either compose form (mapping or `KEY=value` list)."""
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    return dict(item.partition("=")[::2] for item in environment)


def setting_env_names() -> set[str]:
    """Every environment variable `Settings` reads."""
    from common.settings import Settings

    return {f"CONTINUUM_{name.upper()}" for name in Settings.model_fields}


def unknown_variables(names: set[str] | list[str]) -> list[str]:
    """Variables that are neither a real CONTINUUM_* setting nor a standard AWS_* variable."""
    known = setting_env_names()
    return sorted(n for n in names if not (n in known or n.startswith("AWS_")))


@dataclass
class CommandProblems:
    """What did not resolve, one line per problem, so a failure names every missing piece at once."""

    missing: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing)

    def __str__(self) -> str:
        return "\n".join(self.missing)


def continuum_cli():
    """The real `continuum` click command tree (Typer compiles to click)."""
    import typer

    from scheduler.cli import app

    return typer.main.get_command(app)


def _is_group(command) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def resolve_command(argv: list[str], where: str, problems: CommandProblems, root=None):
    """Walk `continuum sub sub … --opt` through click's tree; record a missing command or option.

    Returns the resolved click command, or None when it does not exist (yet).
    """
    assert argv and argv[0] == "continuum", f"{where}: not a continuum command: {argv}"
    command = root if root is not None else continuum_cli()
    path = ["continuum"]
    args = list(argv[1:])
    # Duck-typed: Typer ships its own copy of click, whose group is not `click.Group`.
    while _is_group(command) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.commands.get(name)
        path.append(name)
        if sub is None:
            problems.missing.append(f"{where}: `{' '.join(path)}` is not a CLI command")
            return None
        command = sub
    if _is_group(command):
        problems.missing.append(f"{where}: `{' '.join(path)}` is a command group, not a command")
        return None
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in args:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            if flag not in options:
                problems.missing.append(f"{where}: `{' '.join(path)}` has no option {flag}")
    return command


def as_argv(command: str | list[str] | None) -> list[str]:
    """A compose/k8s command in either form, as an argument list."""
    if command is None:
        return []
    if isinstance(command, str):
        import shlex

        return shlex.split(command)
    return [str(part) for part in command]
