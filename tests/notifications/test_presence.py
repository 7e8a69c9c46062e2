"""The connection registry behind the per-user WebSocket cap, on real Redis."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from notifications.presence import ConnectionRegistry


@pytest.fixture
def registry(settings) -> ConnectionRegistry:
    return ConnectionRegistry(
        redis_url=settings.REDIS_URL, prefix=f"{settings.WEBSOCKET_REDIS_PREFIX}:{uuid.uuid4().hex}"
    )


def processes(settings, count: int) -> list[ConnectionRegistry]:
    """Registries of ``count`` server processes sharing one Redis prefix."""
    prefix = f"{settings.WEBSOCKET_REDIS_PREFIX}:{uuid.uuid4().hex}"
    return [ConnectionRegistry(redis_url=settings.REDIS_URL, prefix=prefix) for _ in range(count)]


def test_given_the_cap_reached_when_another_connects_then_the_oldest_is_evicted(
    registry, frozen_clock
):
    for n in range(3):
        assert registry.register(user="u", connection=f"c{n}", limit=3) == []
        frozen_clock.advance(timedelta(seconds=1))

    assert registry.register(user="u", connection="c3", limit=3) == ["c0"]

    stats = registry.stats()
    assert stats.per_user == {"u": 3}
    assert stats.evictions_total == 1
    assert stats.evictions_per_user == {"u": 1}


def test_given_two_registries_sharing_redis_then_the_cap_spans_both(settings, frozen_clock):
    prefix = f"{settings.WEBSOCKET_REDIS_PREFIX}:{uuid.uuid4().hex}"
    process_a = ConnectionRegistry(redis_url=settings.REDIS_URL, prefix=prefix)
    process_b = ConnectionRegistry(redis_url=settings.REDIS_URL, prefix=prefix)
    process_a.register(user="u", connection="a1", limit=2)
    frozen_clock.advance(timedelta(seconds=1))
    process_a.register(user="u", connection="a2", limit=2)
    frozen_clock.advance(timedelta(seconds=1))

    assert process_b.register(user="u", connection="b1", limit=2) == ["a1"]
    assert process_a.stats().per_user == {"u": 2}


def test_given_a_process_that_stopped_heartbeating_then_its_connections_are_pruned(
    registry, settings, frozen_clock
):
    registry.register(user="u", connection="dead", limit=5)
    frozen_clock.advance(timedelta(seconds=60))
    registry.register(user="u", connection="alive", limit=5)
    frozen_clock.advance(settings.WEBSOCKET_CONNECTION_TTL - timedelta(seconds=30))
    assert registry.refresh(user="u", connection="alive")

    assert registry.cleanup() == 1
    assert registry.stats().per_user == {"u": 1}


def test_given_stale_entries_when_reading_stats_then_they_are_pruned_on_read(
    registry, settings, frozen_clock
):
    registry.register(user="u", connection="c", limit=5)
    frozen_clock.advance(settings.WEBSOCKET_CONNECTION_TTL + timedelta(seconds=1))

    assert registry.stats().per_user == {}


def test_given_an_evicted_connection_when_it_heartbeats_then_it_is_not_counted_again(
    registry, frozen_clock
):
    registry.register(user="u", connection="old", limit=1)
    frozen_clock.advance(timedelta(seconds=1))
    assert registry.register(user="u", connection="new", limit=1) == ["old"]

    assert registry.refresh(user="u", connection="old") is False
    assert registry.stats().per_user == {"u": 1}


def test_given_redis_unreachable_then_the_cap_is_enforced_per_process(frozen_clock):
    unreachable = ConnectionRegistry(redis_url="redis://127.0.0.1:1/0", prefix="nowhere")
    for n in range(2):
        assert unreachable.register(user="u", connection=f"c{n}", limit=2) == []
        frozen_clock.advance(timedelta(seconds=1))

    assert unreachable.register(user="u", connection="c2", limit=2) == ["c0"]
    stats = unreachable.stats()
    assert (stats.source, stats.per_user) == ("local", {"u": 2})


def test_given_redis_restarted_empty_when_connections_heartbeat_then_they_count_again(
    registry, frozen_clock
):
    registry.register(user="u", connection="c", limit=5)
    client = registry._redis()
    for key in client.scan_iter(f"{registry.prefix}:*"):
        client.delete(key)  # what a Redis restart without persistence leaves

    assert registry.refresh(user="u", connection="c")
    assert registry.stats().per_user == {"u": 1}


def test_given_a_process_whose_heartbeat_stopped_when_its_user_connects_elsewhere_then_its_connections_do_not_count_and_no_live_one_is_evicted(
    settings, frozen_clock
):
    killed, alive = processes(settings, 2)
    alive.register(user="u", connection="live", limit=3)
    frozen_clock.advance(timedelta(seconds=1))
    for n in range(2):
        killed.register(user="u", connection=f"dead{n}", limit=3)
    # The killed process beats no more; the live one does. Connection entries are still fresh.
    frozen_clock.advance(settings.WEBSOCKET_PROCESS_TTL)
    assert settings.WEBSOCKET_PROCESS_TTL + timedelta(seconds=1) < settings.WEBSOCKET_CONNECTION_TTL
    assert alive.process_beat()

    assert alive.register(user="u", connection="new", limit=3) == []
    assert alive.register(user="u", connection="newer", limit=3) == []

    stats = alive.stats()
    assert stats.per_user == {"u": 3}
    assert stats.evictions_total == 0


def test_given_a_process_still_beating_when_its_user_goes_over_the_cap_then_its_oldest_connection_is_evicted(
    settings, frozen_clock
):
    quiet, other = processes(settings, 2)
    quiet.register(user="u", connection="oldest", limit=2)
    frozen_clock.advance(settings.WEBSOCKET_PROCESS_TTL - timedelta(seconds=1))
    other.register(user="u", connection="middle", limit=2)

    assert other.register(user="u", connection="newest", limit=2) == ["oldest"]


def test_given_a_dead_process_when_stats_are_read_then_its_connections_are_gone(
    settings, frozen_clock
):
    killed, reader = processes(settings, 2)
    killed.register(user="u", connection="dead", limit=5)
    frozen_clock.advance(settings.WEBSOCKET_PROCESS_TTL + timedelta(seconds=1))

    assert reader.stats().per_user == {}
    assert reader.cleanup() == 0  # already pruned on read


def test_given_redis_lost_the_registry_when_the_heartbeat_refreshes_many_users_then_each_counts_its_own_again(
    registry, frozen_clock
):
    """One heartbeat writes each user's keys once for all its connections, none in another's."""
    for user, connection in [("u1", "a"), ("u1", "b"), ("u2", "c"), ("u1", "d")]:
        registry.register(user=user, connection=connection, limit=5)
        frozen_clock.advance(timedelta(seconds=1))
    client = registry._redis()
    client.delete(*client.keys(f"{registry.prefix}:*"))  # what a Redis restart leaves
    assert registry.stats().per_user == {}

    gone = registry.refresh_many([("u1", "a"), ("u1", "b"), ("u2", "c"), ("u1", "d"), ("u2", "x")])

    assert gone == {("u2", "x")}  # never registered here: not brought back
    assert registry.stats().per_user == {"u1": 3, "u2": 1}
    assert registry.register(user="u2", connection="e", limit=2) == []
    assert registry.register(user="u2", connection="f", limit=2) == ["c"]
