"""Circuit breaker semantics (Polly v8) with an injectable clock, local and shared through Redis."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
import redis
from django.conf import settings

from resilience.breaker import (
    BreakerOptions,
    BrokenCircuitError,
    CircuitBreaker,
    CircuitState,
    IsolatedCircuitError,
    SharedStore,
    circuit_state_changed,
)
from resilience.redis_client import fast_fail_client

OPTIONS = BreakerOptions(
    failure_ratio=0.5, sampling_duration=30, minimum_throughput=5, break_duration=60
)


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("down")


def ok() -> str:
    return "ok"


def outcome(breaker: CircuitBreaker, fn) -> str:
    try:
        breaker.call(fn)
        return "ok"
    except Boom:
        return "failed"
    except BrokenCircuitError:
        return "rejected"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    return CircuitBreaker("test", OPTIONS, clock=clock)


@pytest.fixture
def shared_store():
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1)
    prefix = f"test-breaker-{uuid.uuid4().hex}"
    yield lambda: SharedStore(fast_fail_client(settings.REDIS_URL), prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_does_not_open_below_minimum_throughput_even_at_100_percent_failures(breaker):
    for _ in range(4):
        assert outcome(breaker, fail) == "failed"

    assert breaker.state is CircuitState.CLOSED


def test_opens_when_the_failure_ratio_is_reached_within_the_window(breaker, clock):
    for fn in (ok, ok, fail, ok, fail):  # 2 of 5 failed: 40 %
        outcome(breaker, fn)
    assert breaker.state is CircuitState.CLOSED

    outcome(breaker, fail)  # 3 of 6: 50 %

    assert breaker.state is CircuitState.OPEN
    with pytest.raises(BrokenCircuitError) as rejected:
        breaker.call(ok)
    assert rejected.value.retry_after == pytest.approx(60)
    clock.advance(20)
    assert outcome(breaker, ok) == "rejected"


def test_successes_never_trip_the_circuit(breaker):
    for _ in range(3):
        outcome(breaker, fail)
    for _ in range(10):
        outcome(breaker, ok)

    assert breaker.state is CircuitState.CLOSED


def test_old_buckets_age_out_of_the_window(breaker, clock):
    for _ in range(4):
        outcome(breaker, fail)
    clock.advance(31)  # those four failures are out of the 30 s window

    outcome(breaker, fail)

    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot()["throughput"] == 1


def test_the_window_is_rolling_not_tumbling(breaker, clock):
    for _ in range(3):
        outcome(breaker, fail)
    clock.advance(20)
    for _ in range(2):
        outcome(breaker, fail)  # 5 failures within 30 s across two buckets

    assert breaker.state is CircuitState.OPEN


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        outcome(breaker, fail)
    assert breaker.state is CircuitState.OPEN


def test_after_the_break_exactly_one_probe_runs_and_concurrent_callers_are_rejected(breaker, clock):
    open_breaker(breaker)
    clock.advance(60)
    probe_started, release_probe = threading.Event(), threading.Event()
    results: list[str] = []

    def slow_probe() -> str:
        probe_started.set()
        release_probe.wait(10)
        return "ok"

    prober = threading.Thread(target=lambda: results.append(outcome(breaker, slow_probe)))
    prober.start()
    assert probe_started.wait(10)
    assert breaker.state is CircuitState.HALF_OPEN

    rejected = [outcome(breaker, ok) for _ in range(5)]
    with pytest.raises(BrokenCircuitError) as info:
        breaker.call(ok)
    release_probe.set()
    prober.join(10)

    assert rejected == ["rejected"] * 5
    assert info.value.state is CircuitState.HALF_OPEN and info.value.retry_after > 0
    assert results == ["ok"]
    assert breaker.state is CircuitState.CLOSED


def test_probe_success_closes_and_resets_the_statistics(breaker, clock):
    open_breaker(breaker)
    clock.advance(60)

    assert outcome(breaker, ok) == "ok"

    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot()["throughput"] == 0
    for _ in range(4):
        outcome(breaker, fail)
    assert breaker.state is CircuitState.CLOSED  # needs minimum throughput again


def test_probe_failure_reopens_for_a_full_break(breaker, clock):
    open_breaker(breaker)
    clock.advance(60)

    assert outcome(breaker, fail) == "failed"

    assert breaker.state is CircuitState.OPEN
    with pytest.raises(BrokenCircuitError) as info:
        breaker.call(ok)
    assert info.value.retry_after == pytest.approx(60)


def test_isolate_holds_the_circuit_open_until_closed(breaker, clock):
    breaker.isolate()
    clock.advance(3600)

    with pytest.raises(IsolatedCircuitError):
        breaker.call(ok)
    breaker.close()

    assert outcome(breaker, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED


def test_what_counts_as_a_failure_is_configurable(clock):
    options = BreakerOptions(minimum_throughput=2, is_failure=lambda exc: isinstance(exc, Boom))
    breaker = CircuitBreaker("filtered", options, clock=clock)

    for _ in range(5):
        with pytest.raises(KeyError):  # not handled: counts as a success, like Polly
            breaker.call(lambda: {}["missing"])
    outcome(breaker, fail)
    assert breaker.state is CircuitState.CLOSED  # 1 failure in 6

    for _ in range(5):
        outcome(breaker, fail)
    assert breaker.state is CircuitState.OPEN  # 6 in 11


def test_the_async_form_has_the_same_semantics(breaker, clock):
    async def afail():
        raise Boom("down")

    async def aok():
        return "ok"

    async def scenario() -> list[str]:
        seen = []
        for _ in range(5):
            with pytest.raises(Boom):
                await breaker.call_async(afail)
        with pytest.raises(BrokenCircuitError):
            await breaker.call_async(aok)
        seen.append(breaker.state.value)
        clock.advance(60)
        seen.append(await breaker.call_async(aok))
        seen.append(breaker.state.value)
        return seen

    assert asyncio.run(scenario()) == ["open", "ok", "closed"]


def test_state_changes_are_signalled_in_order_with_failure_counts(breaker, clock):
    seen = []

    def receiver(sender, **kwargs):
        seen.append((sender, kwargs["from_state"], kwargs["to_state"], kwargs["failures"]))

    circuit_state_changed.connect(receiver)
    try:
        open_breaker(breaker)
        clock.advance(60)
        outcome(breaker, ok)
    finally:
        circuit_state_changed.disconnect(receiver)

    assert seen == [
        ("test", "closed", "open", 5),
        ("test", "open", "half_open", 0),  # the failures have aged out of the window by then
        ("test", "half_open", "closed", 0),
    ]


# --- shared through Redis -------------------------------------------------------------------


def test_an_open_circuit_is_seen_by_another_breaker_instance_within_the_sync_interval(
    shared_store, clock
):
    first = CircuitBreaker("shared", OPTIONS, store=shared_store(), clock=clock)
    second = CircuitBreaker("shared", OPTIONS, store=shared_store(), clock=clock)
    assert outcome(second, ok) == "ok"

    open_breaker(first)
    clock.advance(OPTIONS.sync_interval)

    assert outcome(second, ok) == "rejected"
    assert second.state is CircuitState.OPEN


def test_only_one_instance_probes_and_its_success_closes_everywhere(shared_store, clock):
    first = CircuitBreaker("shared", OPTIONS, store=shared_store(), clock=clock)
    second = CircuitBreaker("shared", OPTIONS, store=shared_store(), clock=clock)
    open_breaker(first)
    clock.advance(60)
    in_probe = []

    def probe_that_looks_at_the_other_instance() -> str:
        in_probe.append(outcome(second, ok))
        return "ok"

    assert outcome(first, probe_that_looks_at_the_other_instance) == "ok"
    clock.advance(OPTIONS.sync_interval)

    assert in_probe == ["rejected"]
    assert first.state is CircuitState.CLOSED
    assert second.state is CircuitState.CLOSED
    assert outcome(second, ok) == "ok"


def test_isolate_is_shared_and_survives_a_probe_elsewhere(shared_store, clock):
    first = CircuitBreaker("shared", OPTIONS, store=shared_store(), clock=clock)
    second = CircuitBreaker("shared", OPTIONS, store=shared_store(), clock=clock)

    first.isolate()
    clock.advance(3600)

    with pytest.raises(IsolatedCircuitError):
        second.call(ok)
    second.close()
    clock.advance(OPTIONS.sync_interval)
    assert outcome(first, ok) == "ok"


def test_with_redis_unreachable_the_breaker_works_on_local_state(clock):
    dead = SharedStore(fast_fail_client("redis://127.0.0.1:1/0"))
    breaker = CircuitBreaker("no-redis", OPTIONS, store=dead, clock=clock)

    assert outcome(breaker, ok) == "ok"
    open_breaker(breaker)
    clock.advance(60)
    assert outcome(breaker, ok) == "ok"

    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot()["shared"] is False


def test_given_a_shared_close_older_than_the_local_break_when_the_break_ends_then_this_process_probes(
    shared_store, clock
):
    # Given: this process opened a break that the store never saw (Redis was unreachable), and
    # the store holds the close of an earlier break.
    store = shared_store()
    breaker = CircuitBreaker("shared", OPTIONS, store=store, clock=clock)
    open_breaker(breaker)
    store.clear("shared", until=clock.now - 10, keep_for=60, force=True)

    # When: its break ends. Then: it probes, and its success closes the circuit.
    clock.advance(60)
    assert outcome(breaker, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
