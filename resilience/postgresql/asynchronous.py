"""An asyncio connection to a Django database, for a process whose hot path runs on one event loop.

Django's connections are synchronous: a thread that waits on one hands the GIL over and must win
it back after each round trip. Where the rest of the work is already on an asyncio loop (the
webhook dispatcher's sends), a database round trip on a thread of its own costs two such
handovers, and under load they cost more than the statements. psycopg's ``AsyncConnection`` on
the same loop waits without a thread.

Configured as the alias' Django connections are (``DatabaseWrapper.get_connection_params``: the
adapters, UTC timestamps included, the session's time zone and role), in autocommit: a
transaction is opened and closed by the statements sent (``BEGIN`` and ``COMMIT`` in the same
query as the first and last statements, one round trip each). Parameters are bound in the client
(``AsyncClientCursor``), as several statements in one query need.

Not a pool: one connection for the loop's one sequence of transactions. Nothing here goes through
Django, so Django's query log and execute wrappers do not see these statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import pq, sql


async def connect(*, alias: str = DEFAULT_DB_ALIAS) -> psycopg.AsyncConnection[Any]:
    """A new asyncio connection to ``alias``, in autocommit, binding parameters in the client."""
    database = connections[alias]
    params = database.get_connection_params()
    params.pop("cursor_factory", None)  # Django's, synchronous
    connection = await psycopg.AsyncConnection.connect(
        **params, autocommit=True, cursor_factory=psycopg.AsyncClientCursor
    )
    try:
        # What Django's backend does to each new connection (``_configure_connection``).
        zone = database.timezone_name
        if zone and connection.info.parameter_status("TimeZone") != zone:
            await connection.execute(database.ops.set_time_zone_sql(), [zone])
        if role := database.settings_dict["OPTIONS"].get("assume_role"):
            await connection.execute(sql.SQL("SET ROLE {}").format(sql.Literal(role)))
    except BaseException:
        await connection.close()
        raise
    return connection


async def execute_beginning_each(
    connection: psycopg.AsyncConnection[Any],
    query: str,
    params: Sequence[Any],
    *,
    statements: int,
) -> list[list[tuple]]:
    """Begin a transaction and run ``statements`` statements (separated by semicolons, each
    returning rows) in the same query: the rows of each, in order."""
    async with connection.cursor() as cursor:
        await cursor.execute(f"BEGIN;\n{query}", params)
        results = []
        for _ in range(statements):
            cursor.nextset()
            results.append(await cursor.fetchall())
    return results


async def execute_committing_rows(
    connection: psycopg.AsyncConnection[Any], query: str, params: Sequence[Any]
) -> list[tuple]:
    """Run ``query`` (one statement or several) and commit the open transaction in the same
    query: the rows the first statement returns (none when it returns no rows). When a
    statement fails, the transaction stays open, aborted, until ``rollback``."""
    async with connection.cursor() as cursor:
        await cursor.execute(f"{query};\nCOMMIT", params)
        return [] if cursor.description is None else await cursor.fetchall()


async def rollback(connection: psycopg.AsyncConnection[Any]) -> None:
    """End whatever transaction the connection has open, if it is still usable."""
    if connection.broken or connection.closed:
        return
    if connection.info.transaction_status != pq.TransactionStatus.IDLE:
        await connection.execute("ROLLBACK")
