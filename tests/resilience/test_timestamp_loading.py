"""Timestamps read from real PostgreSQL (resilience/postgresql/base.py): psycopg's own loader in a
UTC session gives what Django's does, an aware datetime in ``datetime.timezone.utc`` at the same
instant, on the cursors Django hands out and on the gateway's models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import BaseTzLoader

from notifications.models import Event
from resilience.postgresql.base import UtcTimestamptzLoader

pytestmark = pytest.mark.django_db


def test_a_timestamp_written_with_any_offset_is_read_back_in_utc_at_the_same_instant():
    # given instants written with offsets east and west of UTC, and the epoch's edge
    written = [
        "2026-01-01 10:00:00.123456+02",
        "2025-12-31 23:30:00-05:30",
        "1970-01-01 00:00:00+00",
    ]

    # when they are read through a cursor Django hands out
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT v::timestamptz FROM unnest(CAST(%s AS text[])) WITH ORDINALITY AS t(v, n) "
            "ORDER BY n",
            [written],
        )
        read = [row[0] for row in cursor.fetchall()]

    # then each is the same instant, aware, in the very UTC object Django uses
    assert read == [
        datetime(2026, 1, 1, 8, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, 5, 0, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
    ]
    assert all(value.tzinfo is UTC for value in read)


def test_cursors_read_timestamps_with_psycopgs_loader_not_djangos_python_one():
    # given the gateway's database connection
    with connection.cursor() as cursor:
        # when a cursor is asked which loader reads timestamptz text
        loader = cursor.cursor.adapters.get_loader(1184, 0)

    # then it is psycopg's (Django's parsed every value in Python: 5-7 µs each)
    assert loader is UtcTimestamptzLoader
    assert not issubclass(loader, BaseTzLoader)


def test_a_model_read_back_keeps_its_timestamps():
    # given an event stored with a creation time
    created = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    event = Event.objects.create(owner="", type="probe", data={}, created_at=created)

    # when it is read back, and filtered on that time
    again = Event.objects.get(pk=event.pk)
    found = Event.objects.filter(created_at__gte=created - timedelta(microseconds=1)).count()

    # then its time is the same aware instant and queries on it still match
    assert again.created_at == created
    assert again.created_at.tzinfo is UTC
    assert found == 1
