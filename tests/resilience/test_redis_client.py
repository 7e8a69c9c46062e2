"""A Redis that hangs is held: after one timeout, calls to it fail at once until one probes.

Redis is the tests' real server behind testing/faultproxy.py, which black-holes it (connections
accepted, nothing forwarded: clients hang until their own timeout). Time is the injectable
clock's; the only real waits are the clients' socket timeouts, a fifth of a second each.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from django.conf import settings
from django.core.cache import caches

from resilience.degradation import Dependency, Probe, probe_run
from resilience.redis_client import (
    HeldConnectionPool,
    HeldTcpConnection,
    RedisHeld,
    fast_fail_client,
    redis_clients_reconnect,
    redis_hold,
)
from testing.faultproxy import FaultProxy
from testing.servers import asgi_server
from tests.factories import ApiKeyFactory, MerchantFactory

TIMEOUT = 0.2


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    if not settings.REDIS_URL:
        pytest.fail("these tests need Redis (REDIS_URL): make test starts it")
    target = urlsplit(settings.REDIS_URL)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        yield proxy


def client_through(proxy: FaultProxy) -> redis.Redis:
    return fast_fail_client(f"redis://127.0.0.1:{proxy.port}/0", timeout=TIMEOUT)


def held_client(proxy: FaultProxy, *, answers_again: bool) -> redis.Redis:
    """A client of the proxy's Redis, held: Redis black-holed, one call timed out; then, with
    ``answers_again``, Redis back (the hold stands until it passes or is released)."""
    client = client_through(proxy)
    proxy.black_hole()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    if answers_again:
        proxy.pass_through()
    return client


def test_given_a_hung_redis_when_one_call_times_out_then_every_client_of_it_fails_at_once(
    proxy, frozen_clock
):
    # given: two clients of the same server, both connected while it answered
    first, second = client_through(proxy), client_through(proxy)
    assert first.ping() and second.ping()
    proxy.black_hole()

    # when: one call waits out its timeout
    with pytest.raises(redis.TimeoutError):
        first.ping()

    # then: the other client's call is not sent at all, nor a new connection opened
    accepted = proxy.accepted
    with pytest.raises(RedisHeld):
        second.ping()
    with pytest.raises(RedisHeld):
        client_through(proxy).ping()
    assert proxy.accepted == accepted
    # a refused Redis raises the same family: callers' fallbacks need nothing new
    assert issubclass(RedisHeld, redis.ConnectionError)


def test_given_a_held_redis_that_answers_again_when_the_hold_has_passed_then_one_call_releases_it(
    proxy, frozen_clock
):
    # given: held after a timeout
    client = held_client(proxy, answers_again=True)
    with pytest.raises(RedisHeld):
        client.ping()  # still held: the hold has not passed

    # when
    frozen_clock.advance(settings.REDIS_TIMEOUT_HOLD)

    # then: the call goes through, and so does every later one
    assert client.ping()
    assert client_through(proxy).ping()
    assert redis_hold(f"127.0.0.1:{proxy.port}").until is None


def test_given_a_held_redis_still_hung_when_the_probe_times_out_then_it_is_held_again(
    proxy, frozen_clock
):
    # given
    client = held_client(proxy, answers_again=False)
    frozen_clock.advance(settings.REDIS_TIMEOUT_HOLD)

    # when: the probe waits out its timeout
    with pytest.raises(redis.TimeoutError):
        client.ping()

    # then: held for another period from now
    with pytest.raises(RedisHeld):
        client.ping()
    hold = redis_hold(f"127.0.0.1:{proxy.port}")
    assert hold.until == frozen_clock.now() + settings.REDIS_TIMEOUT_HOLD


def test_given_one_thread_probing_a_held_redis_when_another_calls_then_it_fails_at_once(
    proxy, frozen_clock
):
    # given: the hold has passed and a thread's call is out as the probe (Redis still hangs)
    held_client(proxy, answers_again=False)
    frozen_clock.advance(settings.REDIS_TIMEOUT_HOLD)
    hold = redis_hold(f"127.0.0.1:{proxy.port}")
    outcome: list[BaseException] = []

    def probe() -> None:
        client = client_through(proxy)
        try:
            client.ping()
        except redis.RedisError as exc:
            outcome.append(exc)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        deadline = time.monotonic() + 5
        while not hold.probing and prober.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)  # the probe's admission is not observable otherwise
        assert hold.probing

        # when / then: this thread is not let through while the probe is out
        with pytest.raises(RedisHeld, match="probing"):
            client_through(proxy).ping()
    finally:
        prober.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], redis.TimeoutError)


def test_given_a_held_redis_that_answers_again_when_a_health_probe_asks_then_the_hold_is_released(
    proxy, frozen_clock
):
    # given: held, and Redis back (the hold has not passed)
    client = held_client(proxy, answers_again=True)

    def ping() -> Probe:
        client.ping()
        return Probe.ok()

    # when: the health monitor probes it (probes ask a held Redis anyway)
    result = probe_run(dependency=Dependency(name="redis-behind-proxy", kind="redis", probe=ping))

    # then: the probe saw it answer, and every call goes through again at once
    assert result.status == Probe.ok().status
    assert client_through(proxy).ping()


def test_given_one_held_server_when_another_is_asked_then_it_answers(proxy, frozen_clock):
    # given: the proxy's address is held
    held_client(proxy, answers_again=False)

    # when / then: the server itself, at its own address, is asked as usual
    assert fast_fail_client(settings.REDIS_URL, timeout=TIMEOUT).ping()


def test_given_a_held_redis_when_recovery_reconnects_the_clients_then_the_hold_is_released(
    proxy, frozen_clock
):
    # given
    client = held_client(proxy, answers_again=True)

    # when: the Redis recovery action (resilience/probes.py) drops every pooled connection
    redis_clients_reconnect()

    # then: asked again at once
    assert client.ping()


def test_the_cache_connects_through_held_connections():
    # The cache (django-redis) is one of the clients a payment create asks.
    if not settings.REDIS_URL:
        pytest.fail("this test needs Redis (REDIS_URL): make test starts it")
    pool = caches["default"].client.get_client().connection_pool  # type: ignore[attr-defined]

    assert isinstance(pool, HeldConnectionPool)
    assert pool.connection_class is HeldTcpConnection


@pytest.mark.django_db(transaction=True)
def test_given_the_gateway_when_redis_hangs_then_creates_answer_without_waiting_on_it(
    proxy, tmp_path
):
    # given: the production server reaching Redis through the proxy, with a hold longer than
    # the test (so exactly one call may wait out a timeout), and a merchant's first payment made
    # while Redis answers (rates cached, connections open)
    _, secret = ApiKeyFactory.create_with_secret(merchant=MerchantFactory.create())
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
        "CRYPTOPAY_DEV_CHAIN": "1",
        "CRYPTOPAY_REDIS_TIMEOUT_HOLD_SECONDS": "600",
    }
    with asgi_server(tmp_path, env=env) as server, httpx.Client(timeout=30) as http:

        def create() -> httpx.Response:
            key = uuid.uuid4().hex
            return http.post(
                f"{server.base_url}/api/v1/payments",
                json={"amount": "19.99", "crypto_currency": "BTC", "order_id": key},
                headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
            )

        assert create().status_code == 201

        # when: Redis hangs; the first create meets it
        proxy.black_hole()
        assert create().status_code == 201
        accepted = proxy.accepted
        started = time.monotonic()
        answers = [create() for _ in range(9)]
        elapsed = time.monotonic() - started

    # then: every create is served, and none of the later ones sent Redis anything (no new
    # connection, no command on an open one: each would have waited out a timeout)
    assert [a.status_code for a in answers] == [201] * 9, answers[-1].text[:300]
    assert proxy.accepted == accepted
    # Before holds, each create waited out six or seven timeouts (about 4 s); now none does.
    assert elapsed < 9 * 0.25, f"9 creates took {elapsed:.2f} s"
    assert f"Redis at 127.0.0.1:{proxy.port} timed out" in server.output()
