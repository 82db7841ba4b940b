"""The ledger's hot statements (create, claim, finish) run at the driver level on Postgres.

Per job, the ledger runs three statements; on 2 busy cores SQLAlchemy's execution layer added ~0.2 ms
of client CPU to each (bench/dispatch.py). This runs the very same statements — compiled once by
SQLAlchemy, so the SQL cannot drift from `ledger._HotStatements` — on the ledger's own pooled
connections. Only Postgres (psycopg 3) takes this path; SQLite keeps the SQLAlchemy one.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
class DriverStatements:
    """The hot statements compiled once to driver SQL and run on the ledger's pooled DBAPI connections.

    The SQL text and the statement's own constants come from SQLAlchemy's compiler, so they cannot
    drift from `_HotStatements`; JSON values are serialised here as SQLAlchemy's bind processor would.
    Driver errors are wrapped into SQLAlchemy's exception classes, so callers see the same errors as
    on the SQLAlchemy path; a statement that meets a dead connection is retried once (safe: see
    `JobLedger._one_statement`).
    """

    def __init__(self, hot: Any, engine: Engine):
        from sqlalchemy.types import JSON

        self._engine = engine
        self._compiled: dict[str, tuple[str, dict[str, Any], tuple[str, ...], bool]] = {}
        for name in ("create", "claim", "finish"):
            statement = getattr(hot, name)
            compiled = statement.compile(dialect=engine.dialect)
            json_keys = tuple(key for key, bind in compiled.binds.items() if isinstance(bind.type, JSON))
            self._compiled[name] = (str(compiled), dict(compiled.params), json_keys, bool(compiled.returning))

    def run(self, name: str, parameters: dict[str, Any]) -> dict[str, Any] | int | None:
        import psycopg

        sql, defaults, json_keys, returns = self._compiled[name]
        values = {**defaults, **parameters}
        for key in json_keys:
            values[key] = json.dumps(values[key])
        for attempt in (1, 2):
            try:
                connection = self._engine.raw_connection()  # pooled
            except psycopg.Error as exc:  # cannot connect: the same error the SQLAlchemy path raises
                raise DBAPIError.instance(None, None, exc, psycopg.Error, dialect=self._engine.dialect) from exc
            try:
                dbapi = connection.dbapi_connection
                if not dbapi.autocommit:  # the engine sets it on connect; never run these inside a transaction
                    dbapi.autocommit = True
                with dbapi.cursor() as cursor:
                    cursor.execute(sql, values)
                    if not returns:
                        return cursor.rowcount
                    row = cursor.fetchone()
                    return None if row is None else dict(zip([column.name for column in cursor.description], row))
            except psycopg.Error as exc:
                lost = self._engine.dialect.is_disconnect(exc, connection.dbapi_connection, None)
                if lost:
                    connection.invalidate(exc)
                    if attempt == 1:
                        continue
                raise DBAPIError.instance(sql, values, exc, psycopg.Error, connection_invalidated=lost,
                                          dialect=self._engine.dialect) from exc
            finally:
                connection.close()  # back to the pool (an invalidated one is discarded)
        raise AssertionError("unreachable")  # pragma: no cover
