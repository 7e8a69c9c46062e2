"""The asyncio connection of resilience/postgresql/asynchronous.py against the real database: set
up as Django's connections are, a transaction in two round trips, a failed one rolled back."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import pytest
from django.db import connection
from psycopg import pq

from resilience.postgresql import asynchronous

pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")
TABLE = "asynchronous_probe"


def on_a_connection(work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """``work`` on a fresh asyncio connection, closed after."""

    async def run() -> T:
        database = await asynchronous.connect()
        try:
            return await work(database)
        finally:
            await database.close()

    return asyncio.run(run())


@pytest.fixture
def probe_table() -> Iterator[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, at timestamptz)")
    try:
        yield TABLE
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {TABLE}")


def rows_in(table: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, at FROM {table} ORDER BY id")  # noqa: S608 - the test's table
        return cursor.fetchall()


def test_a_new_connection_is_in_autocommit_in_utc_and_reads_timestamps_as_aware_utc():
    async def read(database: psycopg.AsyncConnection[Any]) -> tuple:
        async with database.cursor() as cursor:
            await cursor.execute("SELECT %s::timestamptz", ["2026-12-05 12:00:00+02"])
            (at,) = await cursor.fetchone() or (None,)
        return database.autocommit, database.info.parameter_status("TimeZone"), at

    autocommit, zone, at = on_a_connection(read)

    assert autocommit is True
    assert zone == "UTC"
    assert at == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def test_a_transaction_begun_with_its_first_statements_and_committed_with_its_last_takes_two_round_trips(
    probe_table,
):
    # Given an asyncio connection whose messages to the server are traced
    async def transaction_of_two_queries(database: psycopg.AsyncConnection[Any]) -> tuple:
        with tempfile.TemporaryFile(mode="w+") as log:
            database.pgconn.trace(log.fileno())
            database.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            # When a transaction reads in its first query and writes in its second
            each = await asynchronous.execute_beginning_each(
                database,
                f"SELECT count(*) FROM {probe_table}; SELECT %s::int",  # noqa: S608
                [7],
                statements=2,
            )
            returned = await asynchronous.execute_committing_rows(
                database,
                f"INSERT INTO {probe_table} VALUES (%s, now()) RETURNING id",  # noqa: S608
                [each[1][0][0]],
            )
            database.pgconn.untrace()
            log.seek(0)
            trace = log.read()
        return each, returned, trace, database.info.transaction_status

    each, returned, trace, status = on_a_connection(transaction_of_two_queries)

    # Then it took two round trips, got each statement's rows, and committed what it wrote
    assert trace.count("\tReadyForQuery\t") == 2
    assert each == [[(0,)], [(7,)]]
    assert returned == [(7,)]
    assert status == pq.TransactionStatus.IDLE
    assert [row[0] for row in rows_in(probe_table)] == [7]


def test_a_failed_statement_leaves_the_transaction_aborted_until_rolled_back_and_writes_nothing(
    probe_table,
):
    async def failing(database: psycopg.AsyncConnection[Any]) -> tuple:
        await asynchronous.execute_beginning_each(
            database,
            f"INSERT INTO {probe_table} VALUES (1, now()) RETURNING id",  # noqa: S608
            [],
            statements=1,
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            await asynchronous.execute_committing_rows(
                database,
                f"INSERT INTO {probe_table} VALUES (2, now()); "  # noqa: S608
                f"INSERT INTO {probe_table} VALUES (1, now())",
                [],
            )
        aborted = database.info.transaction_status
        await asynchronous.rollback(database)
        return aborted, database.info.transaction_status

    aborted, after = on_a_connection(failing)

    assert aborted == pq.TransactionStatus.INERROR
    assert after == pq.TransactionStatus.IDLE
    assert rows_in(probe_table) == []
