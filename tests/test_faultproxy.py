"""The fault proxy against the real Redis (redis-py) and PostgreSQL (psycopg): each mode does to a
client what the real fault would, and pass-through brings everything back."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import psycopg
import pytest
import redis
from django.conf import settings

from resilience.redis_client import fast_fail_client
from testing.faultproxy import FaultProxy

REDIS = urlparse(settings.REDIS_URL)
DATABASE = settings.DATABASES["default"]


@pytest.fixture
def redis_proxy() -> Iterator[FaultProxy]:
    with FaultProxy(REDIS.hostname or "127.0.0.1", REDIS.port or 6379) as proxy:
        yield proxy


@pytest.fixture
def pg_proxy() -> Iterator[FaultProxy]:
    with FaultProxy(DATABASE["HOST"] or "127.0.0.1", int(DATABASE["PORT"] or 5432)) as proxy:
        yield proxy


def redis_through(proxy: FaultProxy, timeout: float = 0.5) -> redis.Redis:
    return fast_fail_client(proxy.url("redis", REDIS.path or "/0"), timeout=timeout)


def pg_through(proxy: FaultProxy, connect_timeout: int = 2) -> psycopg.Connection:
    return psycopg.connect(
        host=proxy.host,
        port=proxy.port,
        user=DATABASE["USER"],
        password=DATABASE["PASSWORD"] or None,
        dbname="postgres",
        connect_timeout=connect_timeout,
        autocommit=True,
    )


def assert_reset(address: tuple[str, int]) -> None:
    """A raw client sees an RST (at connect, send or receive), not an orderly end of stream."""
    with pytest.raises(ConnectionResetError) as raised:
        with socket.create_connection(address, timeout=2) as raw:
            raw.sendall(b"PING\r\n")
            time.sleep(0.05)
            data = raw.recv(16)
            pytest.fail(f"expected a reset, got {data!r}")
    assert raised.value.errno == errno.ECONNRESET


def select_one(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT 1").fetchone()[0]


def test_given_pass_through_when_clients_talk_through_the_proxy_then_they_reach_the_services(
    redis_proxy, pg_proxy
):
    client = redis_through(redis_proxy)
    client.set(f"{settings.CACHES['default'].get('KEY_PREFIX', 'x')}:faultproxy", "1", ex=5)

    with pg_through(pg_proxy) as conn:
        assert select_one(conn) == 1
    assert client.ping() is True
    assert redis_proxy.accepted == 1
    assert pg_proxy.accepted == 1


def test_given_latency_when_a_client_makes_a_round_trip_then_it_takes_at_least_twice_the_delay(
    redis_proxy, pg_proxy
):
    client = redis_through(redis_proxy, timeout=2)
    client.ping()  # connected before the latency starts
    conn = pg_through(pg_proxy)

    redis_proxy.latency(150)
    pg_proxy.latency(150)
    started = time.monotonic()
    client.ping()
    redis_round_trip = time.monotonic() - started
    started = time.monotonic()
    select_one(conn)
    pg_round_trip = time.monotonic() - started
    redis_proxy.pass_through()
    started = time.monotonic()
    client.ping()
    normal = time.monotonic() - started
    conn.close()

    assert 0.3 <= redis_round_trip < 1.5
    assert 0.3 <= pg_round_trip < 1.5
    assert normal < 0.1


def test_given_reset_when_open_and_new_connections_are_used_then_both_see_a_reset(
    redis_proxy, pg_proxy
):
    client = redis_through(redis_proxy)
    client.ping()
    conn = pg_through(pg_proxy)
    select_one(conn)

    redis_proxy.reset()
    pg_proxy.reset()

    with pytest.raises(redis.ConnectionError):
        client.ping()  # the open connection was reset
    with pytest.raises(redis.ConnectionError):
        redis_through(redis_proxy).ping()  # and so is a new one
    with pytest.raises(psycopg.OperationalError):
        select_one(conn)
    with pytest.raises(psycopg.OperationalError):
        pg_through(pg_proxy)
    assert_reset(redis_proxy.address)

    redis_proxy.pass_through()
    pg_proxy.pass_through()
    assert client.ping() is True  # redis-py reconnects on the next command
    with pg_through(pg_proxy) as fresh:
        assert select_one(fresh) == 1


def test_given_black_hole_when_clients_wait_for_an_answer_then_they_time_out_and_recover_after(
    redis_proxy, pg_proxy
):
    client = redis_through(redis_proxy, timeout=0.3)
    client.ping()

    redis_proxy.black_hole()
    pg_proxy.black_hole()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    redis_waited = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        pg_through(pg_proxy, connect_timeout=2)  # libpq's shortest connect timeout is 2 s
    pg_waited = time.monotonic() - started
    accepted = pg_proxy.accepted

    redis_proxy.pass_through()
    pg_proxy.pass_through()

    assert 0.25 <= redis_waited < 1.5
    assert 1.9 <= pg_waited < 5
    assert accepted >= 1  # the connection was accepted, just never answered
    assert redis_through(redis_proxy).ping() is True
    with pg_through(pg_proxy) as conn:
        assert select_one(conn) == 1


def test_given_down_when_clients_connect_then_they_are_refused_at_once_until_it_is_back(
    redis_proxy, pg_proxy
):
    client = redis_through(redis_proxy)
    client.ping()
    port = redis_proxy.port

    redis_proxy.down()
    pg_proxy.down()

    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(redis_proxy.address, timeout=1)
    with pytest.raises(psycopg.OperationalError, match="refused"):
        pg_through(pg_proxy)
    assert time.monotonic() - started < 1  # refused, not timed out

    redis_proxy.pass_through()
    pg_proxy.pass_through()
    assert redis_proxy.port == port  # the same address comes back
    assert client.ping() is True
    with pg_through(pg_proxy) as conn:
        assert select_one(conn) == 1


def test_given_a_target_that_is_not_listening_when_a_client_connects_then_it_is_reset():
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    dead_port = unused.getsockname()[1]
    unused.close()

    with FaultProxy("127.0.0.1", dead_port) as proxy:
        assert_reset(proxy.address)
