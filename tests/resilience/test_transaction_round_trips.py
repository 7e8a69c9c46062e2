"""A transaction's BEGIN and COMMIT sent with its first and last statements
(resilience/postgresql/base.py ``execute_beginning`` and ``execute_committing``), watched on the
wire with libpq's own trace of the messages the connection exchanges with the server."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from django.db import IntegrityError, connection, connections, transaction
from psycopg import pq
from rest_framework.test import APIClient

from payments.models import Payment
from resilience.models import IdempotencyKey
from resilience.postgresql.base import DatabaseWrapper
from tests.factories import ApiKeyFactory, MerchantFactory

pytestmark = pytest.mark.django_db(transaction=True)

PROBE_TABLE = "round_trip_probe"


def database() -> DatabaseWrapper:
    """The default connection, as the backend that opens and closes transactions this way."""
    default = connections["default"]
    assert isinstance(default, DatabaseWrapper)
    return default


@dataclass
class Wire:
    lines: list[str] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        """Each exchange ends with the server's ReadyForQuery."""
        return sum("\tReadyForQuery\t" in line for line in self.lines)

    @property
    def queries(self) -> list[str]:
        """The text of every simple query the client sent."""
        return [line.split("\tQuery\t", 1)[1].strip() for line in self.lines if "\tQuery\t" in line]


@contextmanager
def traced() -> Iterator[Wire]:
    """libpq's trace of the default connection while the block runs."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    wire = Wire()
    with tempfile.TemporaryFile(mode="w+") as log:
        pgconn.trace(log.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield wire
        finally:
            pgconn.untrace()
            log.seek(0)
            # A query's text may span lines: each message starts with its direction.
            for line in log.read().split("\n"):
                if line.startswith(("F\t", "B\t")) or not wire.lines:
                    wire.lines.append(line)
                else:
                    wire.lines[-1] += " " + line


@pytest.fixture
def probe_table() -> Iterator[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {PROBE_TABLE} (id integer PRIMARY KEY, "
            "parent integer REFERENCES round_trip_probe (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        yield PROBE_TABLE
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {PROBE_TABLE}")


def probe_ids() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {PROBE_TABLE} ORDER BY id")  # noqa: S608
        return [row[0] for row in cursor.fetchall()]


INSERT = f"INSERT INTO {PROBE_TABLE} (id, parent) VALUES (%s, %s) RETURNING id"  # noqa: S608
COUNT = f"SELECT count(*) FROM {PROBE_TABLE}"  # noqa: S608
REPARENT = f"UPDATE {PROBE_TABLE} SET parent = 1 WHERE id = 1"  # noqa: S608


def test_a_block_whose_first_and_last_statements_carry_begin_and_commit_takes_two_round_trips(
    probe_table,
):
    # Given the outermost atomic block, when its only two statements carry BEGIN and COMMIT
    with traced() as wire, transaction.atomic():
        rows = database().execute_beginning(INSERT, [1, None])
        database().execute_committing(INSERT, [2, 1])

    # Then two round trips, no BEGIN nor COMMIT on their own, and both rows are kept
    assert rows == [(1,)]
    assert wire.round_trips == 2, wire.lines
    assert "BEGIN" not in wire.queries and "COMMIT" not in wire.queries
    assert wire.queries[0].startswith('"BEGIN;')
    assert wire.queries[1].rstrip('"').endswith("COMMIT")
    assert probe_ids() == [1, 2]
    # and the connection is back in autocommit, for Django and for psycopg
    assert connection.get_autocommit()
    assert connection.connection.autocommit
    assert connection.connection.info.transaction_status == pq.TransactionStatus.IDLE


def test_given_the_begin_sent_with_the_first_statement_when_the_block_fails_then_nothing_is_kept(
    probe_table,
):
    # Given a block opened by its first statement
    with pytest.raises(RuntimeError), transaction.atomic():
        database().execute_beginning(INSERT, [1, None])
        with connection.cursor() as cursor:
            cursor.execute(INSERT, [2, 1])
        # When it fails before its end
        raise RuntimeError("the request failed")

    # Then both statements are rolled back together: the block was one transaction
    assert probe_ids() == []
    assert connection.get_autocommit()


def test_given_a_deferred_constraint_when_the_commit_sent_with_the_last_statement_fails_then_it_raises_in_the_block_and_nothing_is_kept(
    probe_table,
):
    # Given a row whose parent does not exist (checked at commit: a deferred foreign key)
    with pytest.raises(IntegrityError), transaction.atomic():
        database().execute_beginning(INSERT, [1, None])
        # When the last statement's COMMIT finds it
        database().execute_committing(INSERT, [2, 99])

    # Then the block got the error and nothing was kept; the connection works on
    assert probe_ids() == []
    with transaction.atomic():
        database().execute_beginning(INSERT, [3, None])
    assert probe_ids() == [3]


def test_given_the_begin_sent_with_the_first_statement_when_the_block_ends_on_its_own_then_its_commit_keeps_everything(
    probe_table,
):
    # Given a block opened by its first statement, whose last statement carries no COMMIT
    with traced() as wire, transaction.atomic():
        database().execute_beginning(INSERT, [1, None])
        with connection.cursor() as cursor:
            cursor.execute(INSERT, [2, 1])

    # When it ends, then the block's own COMMIT is sent and keeps both rows
    assert wire.queries[-1] == '"COMMIT"'
    assert wire.round_trips == 3
    assert probe_ids() == [1, 2]
    assert connection.get_autocommit()


def test_inside_a_savepoint_the_statements_run_as_they_are_and_the_outer_block_commits(
    probe_table,
):
    # Given an outer block that has begun, and a savepoint inside it
    with traced() as wire, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(INSERT, [1, None])
        with transaction.atomic():
            # When the statements are asked to carry BEGIN and COMMIT
            database().execute_beginning(INSERT, [2, None])
            database().execute_committing(INSERT, [3, None])
        with connection.cursor() as cursor:
            cursor.execute(INSERT, [4, None])

    # Then neither does: the outer block owns its transaction and commits it once, with all rows
    assert not any(query.startswith('"BEGIN;') for query in wire.queries)
    assert not any(
        query.rstrip('"').endswith("COMMIT") and len(query) > 8 for query in wire.queries
    )
    assert wire.queries.count('"COMMIT"') == 1
    assert probe_ids() == [1, 2, 3, 4]


def test_outside_a_block_the_statements_run_on_their_own():
    # Given autocommit (no atomic block), when both run
    with traced() as wire:
        assert database().execute_beginning("SELECT %s::int", [7]) == [(7,)]
        assert database().execute_committing("SELECT %s::int", [8]) == 1

    # Then two statements and nothing else
    assert wire.round_trips == 2
    assert not any("BEGIN" in query or "COMMIT" in query for query in wire.queries)


def test_a_payment_create_opens_and_closes_its_transaction_with_the_gate_s_statements():
    """The API's create: the key's claim carries the transaction's BEGIN and the key's
    completion its COMMIT, so the create is four round trips (the address, the claim, the
    payment, the completion), and one more when the API key is not in the process's cache."""
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = {"amount": "10.00", "crypto_currency": "LTC", "order_id": "o-0"}
    assert api.post("/api/v1/payments", body, format="json").status_code == 201  # warm

    # When a payment is created with a key
    with traced() as wire:
        answer = api.post(
            "/api/v1/payments", {**body, "order_id": "o-1"}, format="json",
            HTTP_IDEMPOTENCY_KEY="k-1",
        )  # fmt: skip

    # Then it is committed with its key's answer, in four or five round trips
    assert answer.status_code == 201, answer.content
    payment = Payment.objects.get(merchant=merchant, order_id="o-1")
    key = IdempotencyKey.objects.get(owner=merchant.public_id, key="k-1")
    assert key.status == IdempotencyKey.Status.COMPLETED
    assert key.response_body is not None
    assert payment.public_id in bytes(key.response_body).decode()
    assert wire.round_trips <= 5, wire.lines
    assert "BEGIN" not in wire.queries and "COMMIT" not in wire.queries


def test_several_statements_carry_the_block_s_begin_and_commit_and_give_each_one_s_rows(
    probe_table,
):
    # Given the outermost block, when its first query holds two statements and its last two
    with traced() as wire, transaction.atomic():
        first, second = database().execute_beginning_each(
            f"{INSERT}; {COUNT}", [1, None], statements=2
        )
        rows = database().execute_committing_rows(f"{INSERT}; {REPARENT}", [2, 1])

    # Then two round trips: each statement's rows, the first's of the last query, all kept
    assert (first, second, rows) == ([(1,)], [(1,)], [(2,)])
    assert wire.round_trips == 2, wire.lines
    assert wire.queries[0].startswith('"BEGIN;')
    assert wire.queries[1].rstrip('"').endswith("COMMIT")
    assert probe_ids() == [1, 2]
    assert connection.get_autocommit()


def test_several_statements_outside_a_block_run_as_they_are_in_one_query(probe_table):
    # Given autocommit (no atomic block), when both run
    with traced() as wire:
        first, second = database().execute_beginning_each(
            f"{INSERT}; {COUNT}", [1, None], statements=2
        )
        rows = database().execute_committing_rows(f"{INSERT}; SELECT 1", [2, None])
        none = database().execute_committing_rows(f"{REPARENT}; {COUNT}", [])

    # Then one query each, with neither BEGIN nor COMMIT (and no rows from a first statement
    # that returns none)
    assert (first, second, rows, none) == ([(1,)], [(1,)], [(2,)], [])
    assert wire.round_trips == 3
    assert not any("BEGIN" in query or "COMMIT" in query for query in wire.queries)
    assert probe_ids() == [1, 2]
