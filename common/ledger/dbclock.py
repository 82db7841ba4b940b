"""The database's clock, as SQL: every lease time is computed and compared by the database itself.

Why: a worker or reaper whose own clock runs ahead by more than (lease − heartbeat) would otherwise
treat every live lease as expired and steal it. With the times computed in SQL, one clock — the
database server's — decides, whatever the clocks of the machines around it say.

SQLite stores our datetimes as text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, SQLAlchemy's format), so its
"now" is rendered in exactly that format (`%f` gives SS.mmm, padded to microseconds with '000'): the
text comparisons `lease_expires_at < now` then order like the times they spell. Postgres uses
`statement_timestamp()`: the time of the current statement, also inside a longer transaction (where
`now()` would be the transaction's start and let a lease look alive for too long).
"""

from __future__ import annotations

from sqlalchemy import DateTime, Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

_SQLITE_FORMAT = "'%Y-%m-%d %H:%M:%f000'"


class db_now(FunctionElement):  # noqa: N801 - reads like the SQL function it renders
    """The database server's current time (UTC)."""

    type = DateTime(timezone=True)
    inherit_cache = True


class db_now_plus(FunctionElement):  # noqa: N801
    """The database server's current time plus a number of seconds (a float bind or literal)."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now, "postgresql")
def _pg_now(element, compiler, **kw):  # noqa: ANN001, ARG001 - SQLAlchemy compiler hook
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _sqlite_now(element, compiler, **kw):  # noqa: ANN001, ARG001
    return f"strftime({_SQLITE_FORMAT}, 'now')"


@compiles(db_now_plus, "postgresql")
def _pg_now_plus(element, compiler, **kw):  # noqa: ANN001
    (seconds,) = element.clauses
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(db_now_plus, "sqlite")
def _sqlite_now_plus(element, compiler, **kw):  # noqa: ANN001
    (seconds,) = element.clauses
    # 'now' is the same instant for every call within one statement (SQLite documents this).
    return f"strftime({_SQLITE_FORMAT}, 'now', printf('%+.6f seconds', {compiler.process(seconds, **kw)}))"


def seconds_from_now(seconds: ColumnElement | float) -> db_now_plus:
    """`db now + seconds`; `seconds` may be a bind parameter (compiled once) or a number."""
    from sqlalchemy import literal

    if not isinstance(seconds, ColumnElement):
        seconds = literal(float(seconds), Float())
    return db_now_plus(seconds)
