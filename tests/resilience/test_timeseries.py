"""Dashboard time series (resilience.timeseries): bounded, read by time, sampled from the
registered sources (breakers here, queues from notifications), in Redis or, embedded, in memory."""

from __future__ import annotations

import time

import pytest
from django.conf import settings as django_settings

from notifications import queues
from resilience import timeseries
from resilience.breaker import breakers
from resilience.redis_client import fast_fail_client
from tests.cryptopay import test_dashboard
from tests.cryptopay.test_dashboard import Down, fail, section

# The dashboard tests' fixtures: breakers of this test only, and an operator's admin session.
prefix = test_dashboard.prefix
staff = test_dashboard.staff

pytestmark = pytest.mark.django_db


@pytest.fixture
def series_prefix(settings):
    settings.TIMESERIES_REDIS_PREFIX = f"{django_settings.TIMESERIES_REDIS_PREFIX}:{time.time_ns()}"
    yield settings.TIMESERIES_REDIS_PREFIX
    client = fast_fail_client(settings.REDIS_URL, timeout=2)
    for key in client.scan_iter(f"{settings.TIMESERIES_REDIS_PREFIX}:*"):
        client.delete(key)


def test_given_more_points_than_the_bound_when_recorded_then_only_the_newest_are_kept(
    series_prefix, settings
):
    settings.TIMESERIES_POINTS = 5
    for second in range(12):
        timeseries.record({"queue:high": second}, at=1000.0 + second)

    series = timeseries.read(["queue:high"], since=0)["queue:high"]
    key = f"{series_prefix}:queue:high"

    assert series.points == [(1000.0 + s, float(s)) for s in range(7, 12)]
    assert fast_fail_client(settings.REDIS_URL, timeout=2).llen(key) == 5


def test_given_old_and_new_points_when_read_since_a_time_then_only_newer_ones_come(series_prefix):
    timeseries.record({"breaker:x": 2}, at=100.0)
    timeseries.record({"breaker:x": 0}, at=200.0)

    assert timeseries.read(["breaker:x", "breaker:y"], since=150.0) == {
        "breaker:x": timeseries.Series("breaker:x", [(200.0, 0.0)]),
        "breaker:y": timeseries.Series("breaker:y", []),
    }


def test_given_no_redis_when_recorded_then_the_series_live_in_this_process(settings):
    settings.REDIS_URL = ""
    settings.TIMESERIES_POINTS = 3
    for second in range(5):
        timeseries.record({"queue:embedded": second}, at=float(second))

    points = timeseries.read(["queue:embedded"], since=0)["queue:embedded"].points

    assert points == [(2.0, 2.0), (3.0, 3.0), (4.0, 4.0)]


def test_given_an_open_breaker_and_queued_events_when_sampled_then_both_series_get_a_point(
    series_prefix,
    prefix,
    settings,
):
    tripped = breakers.get("timeseries:tripped")
    for _ in range(5):
        with pytest.raises(Down):
            tripped.call(fail)
    queues.enqueue_many([(1, "high"), (2, "high")])
    before = time.time()

    timeseries.sample()
    read = timeseries.read(["breaker:timeseries:tripped", "queue:high"], since=before - 1)

    assert [v for _, v in read["breaker:timeseries:tripped"].points] == [2.0]  # open
    assert [v for _, v in read["queue:high"].points] == [2.0]


def test_given_history_when_staff_opens_the_dashboard_then_breakers_and_queues_have_sparklines(
    staff,
    series_prefix,
    prefix,
):
    tripped = breakers.get("timeseries:spark")
    now = time.time()
    for minutes_ago, state in ((50, 0), (30, 2), (10, 0)):
        timeseries.record({"breaker:timeseries:spark": state}, at=now - minutes_ago * 60)
    timeseries.record({"queue:high": 4}, at=now - 60)
    assert tripped.state == "closed"

    html = staff.get("/admin/resilience/").content.decode()
    breaker_row = html.split('data-breaker="timeseries:spark"', 1)[1].split("</tr>", 1)[0]
    queue_row = section(html, "queues").split('data-queue="high"', 1)[1].split("</tr>", 1)[0]

    assert '<svg class="sparkline"' in breaker_row
    assert "last hour: min 0, max 2, now 0" in breaker_row
    assert '<svg class="sparkline"' in queue_row
    assert "now 4" in queue_row
    assert "<script" not in breaker_row + queue_row
