"""Prepared statements on real PostgreSQL (resilience/postgresql/base.py, settings
``DATABASE_PREPARED_STATEMENTS``): a statement a connection repeats is prepared by the server, and
a migration that another connection runs meanwhile never leaves a statement failing for good."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from accounts.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)

PROBE_TABLE = "prepared_statement_probe"
PROBE_QUERY = f"SELECT id, name FROM {PROBE_TABLE} WHERE id = %s"  # noqa: S608


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def probe() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(PROBE_QUERY, [1])
        return cursor.fetchall()


@pytest.fixture
def probe_table() -> Iterator[psycopg.Connection]:
    """A scratch table, and a second connection to the same database (another process's, say
    the one running a migration)."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {PROBE_TABLE} (id integer, name varchar(10))")
        cursor.execute(f"INSERT INTO {PROBE_TABLE} VALUES (1, 'x')")  # noqa: S608
    other = psycopg.connect(
        dbname=connection.settings_dict["NAME"],
        host=connection.settings_dict["HOST"],
        port=connection.settings_dict["PORT"] or 5432,
        user=connection.settings_dict["USER"],
        autocommit=True,
    )
    try:
        yield other
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {PROBE_TABLE}")


def test_an_orm_query_repeated_on_a_connection_is_prepared_by_the_server():
    # Given the production settings
    assert settings.DATABASE_PREPARED_STATEMENTS
    # When one query runs as often as the threshold asks, and once more
    for _ in range(settings.DATABASE_PREPARE_THRESHOLD + 1):
        assert list(ApiKey.objects.filter(prefix="cpk_nobody")) == []
    # Then the server holds it prepared
    statements = prepared_statements()
    table = ApiKey._meta.db_table
    assert any(f'FROM "{table}"' in statement for statement in statements), statements


def test_given_a_prepared_statement_when_a_migration_changes_its_column_type_then_it_still_answers(
    probe_table,
):
    # Given a statement prepared on this connection
    for _ in range(settings.DATABASE_PREPARE_THRESHOLD + 1):
        assert probe() == [(1, "x")]
    assert any(PROBE_TABLE in statement for statement in prepared_statements())
    # When another connection changes the type of a column it returns
    probe_table.execute(f"ALTER TABLE {PROBE_TABLE} ALTER COLUMN name TYPE varchar(20)")
    # Then the statement answers at once, outside a transaction (the server refused the
    # prepared one: "cached plan must not change result type")
    assert probe() == [(1, "x")]
    assert probe() == [(1, "x")]


def test_given_a_prepared_statement_when_a_migration_changes_it_inside_a_transaction_then_only_that_transaction_fails(
    probe_table,
):
    # Given a statement prepared on this connection
    for _ in range(settings.DATABASE_PREPARE_THRESHOLD + 1):
        assert probe() == [(1, "x")]
    # When another connection changes the type of a column it returns
    probe_table.execute(f"ALTER TABLE {PROBE_TABLE} ALTER COLUMN name TYPE varchar(20)")
    # Then the transaction that meets the stale statement fails (nothing retries a transaction
    # half done), and its rollback forgets every prepared statement: the next one answers
    with pytest.raises(DatabaseError, match="cached plan must not change result type"):
        with transaction.atomic():
            probe()
    with transaction.atomic():
        assert probe() == [(1, "x")]
    assert probe() == [(1, "x")]
