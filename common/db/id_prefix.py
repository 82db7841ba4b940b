"""Git-style id prefixes: any unique start of a job or pipeline-run id names it.

Tables show ids cut to `SHORT_ID` characters so they fit 80 columns; every command that takes an id
accepts such a prefix (or the whole id) and says which ids a too-short prefix matches.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from common.db.engine import session_scope
from common.errors import NotFound, ValidationError

SHORT_ID = 8  # uuid4 prefixes this long collide once in ~4 billion pairs
MIN_PREFIX = 4


def short_id(full_id: str) -> str:
    return full_id[:SHORT_ID]


def resolve_id(sessions: Any, model: Any, given: str, noun: str, list_command: str) -> str:
    """The one id of `model` (a table with a string `id`) equal to or starting with `given`.

    Raises NotFound (nothing matches) or ValidationError (too short, or more than one match), each
    naming the fix.
    """
    given = given.strip()
    with session_scope(sessions) as session:
        if session.get(model, given) is not None:
            return given
        if len(given) < MIN_PREFIX:
            raise ValidationError(f"{noun} id prefix {given!r} is too short: give at least {MIN_PREFIX} "
                                  f"characters (ids are in `{list_command}`)")
        pattern = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        matches = list(session.scalars(select(model.id).where(model.id.like(pattern, escape="\\")).limit(6)))
    if not matches:
        raise NotFound(f"no {noun} {given!r}: list them with `{list_command}`")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", …" if len(matches) > 5 else "")
        raise ValidationError(f"{noun} id prefix {given!r} matches {shown}: give more characters")
    return matches[0]
