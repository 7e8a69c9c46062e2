"""Every index of the gateway's tables earns its writes: none is a copy of the start of another.

Each index is one more insertion, and more WAL, for every row written: an index whose columns (and
operator classes) another index of the table leads with answers nothing the other does not.
Django adds one for every foreign key and every ``db_index`` field, whatever the table's
constraints and composite indexes already cover.
"""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

# The tables of our apps; Django's and third parties' are theirs to shape.
OURS = ("accounts_", "payments_", "notifications_", "resilience_")

COVERED = """
    WITH idx AS (
        SELECT i.indrelid::regclass::text AS tbl, c.relname AS name, i.indisunique AS uniq,
               i.indpred IS NOT NULL AS partial,
               string_to_array(i.indkey::text, ' ') AS cols,
               string_to_array(i.indclass::text, ' ') AS ops
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema()
    )
    SELECT a.tbl, a.name, b.name
    FROM idx a JOIN idx b ON a.tbl = b.tbl AND a.name <> b.name
    WHERE NOT a.uniq AND NOT a.partial AND NOT b.partial
      AND cardinality(a.cols) <= cardinality(b.cols)
      AND a.cols = b.cols[1:cardinality(a.cols)]
      AND a.ops = b.ops[1:cardinality(a.ops)]
    ORDER BY 1, 2
"""


def test_no_index_of_ours_is_the_start_of_another_index_of_its_table():
    # Given the migrated schema
    assert connection.vendor == "postgresql"

    # When the indexes are compared with the others of their table
    with connection.cursor() as cursor:
        cursor.execute(COVERED)
        covered = [row for row in cursor.fetchall() if row[0].startswith(OURS)]

    # Then none is covered by another
    assert covered == []


# The tables every payment writes to.
WRITTEN_PER_PAYMENT = (
    "payments_payment",
    "payments_paymentevent",
    "notifications_event",
    "notifications_webhookdelivery",
    "notifications_webhookattempt",
    "resilience_idempotencykey",
)


def test_the_tables_every_payment_writes_have_no_like_prefix_index():
    # Given the migrated schema (Django adds a varchar_pattern_ops twin to every unique=True or
    # db_index text field on PostgreSQL; no query here makes LIKE 'prefix%')
    # When the indexes of the tables a payment writes to are listed
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = ANY(%s) AND indexdef LIKE %s",
            [list(WRITTEN_PER_PAYMENT), "%pattern_ops%"],
        )
        twins = cursor.fetchall()

    # Then none is such a twin
    assert twins == []
