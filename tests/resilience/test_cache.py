"""The tiered cache: levels with ages, single-flight refresh, XFetch early refresh, Redis loss."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.conf import settings
from django.core.cache import caches

from resilience.cache import CACHE, EMERGENCY, LIVE, TieredCache
from testing.service_control import redis_stopped


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Source:
    def __init__(self) -> None:
        self.calls = 0
        self.value = 1
        self.failing = False

    def __call__(self) -> int:
        self.calls += 1
        if self.failing:
            raise ConnectionError("source down")
        return self.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tiered(clock) -> TieredCache[int]:
    # rand=1.0 turns early refresh off (ln 1 = 0) except where a test asks for it.
    return TieredCache(
        namespace=f"test-cache-{uuid.uuid4().hex}",
        ttl=300,
        emergency_max_age=7200,
        clock=clock,
        rand=lambda: 1.0,
    )


def test_first_read_is_live_then_cached_with_its_age(tiered, clock):
    source = Source()

    first = tiered.get("k", source)
    clock.now += 120
    second = tiered.get("k", source)

    assert (first.level, first.age, first.value) == (LIVE, 0, 1)
    assert (second.level, second.age, second.value) == (CACHE, 120, 1)
    assert source.calls == 1


def test_expired_value_is_refreshed_and_a_failing_source_demotes_to_emergency(tiered, clock):
    source = Source()
    tiered.get("k", source)
    clock.now += 301
    source.value = 2

    assert tiered.get("k", source).level == LIVE
    assert tiered.get("k", source).value == 2

    source.failing = True
    clock.now += 3600
    answer = tiered.get("k", source)
    assert (answer.level, answer.value, answer.age) == (EMERGENCY, 2, 3600)

    clock.now += 3601  # now older than two hours
    assert tiered.get("k", source) is None


def test_a_failing_source_with_nothing_stored_gives_nothing(tiered):
    source = Source()
    source.failing = True

    assert tiered.get("k", source) is None


def test_only_one_caller_refreshes_at_a_time_and_the_others_get_the_previous_value(tiered, clock):
    source = Source()
    tiered.get("k", source)
    clock.now += 301  # expired: everyone wants to refresh
    entered, release = threading.Event(), threading.Event()

    def slow_source() -> int:
        entered.set()
        release.wait(10)
        source.calls += 1
        return 99

    refresher = threading.Thread(target=lambda: tiered.get("k", slow_source))
    refresher.start()
    assert entered.wait(10)
    others = [tiered.get("k", source) for _ in range(20)]
    release.set()
    refresher.join(10)

    assert source.calls == 2  # the first fill and the one slow refresh; the 20 others waited
    assert {(a.level, a.value) for a in others} == {(EMERGENCY, 1)}
    assert tiered.get("k", source).value == 99


def test_given_a_cold_key_when_20_threads_race_then_all_wait_for_the_one_refresh(clock):
    tiered = TieredCache(
        namespace=f"test-cache-{uuid.uuid4().hex}",
        ttl=300,
        emergency_max_age=7200,
        clock=clock,
        rand=lambda: 1.0,
        wait_timeout=10,
    )
    entered, release = threading.Event(), threading.Event()
    calls = []

    def slow_source() -> int:
        calls.append(1)
        entered.set()
        release.wait(10)
        return 7

    answers: list = [None] * 20
    threads = [
        threading.Thread(target=lambda i=i: answers.__setitem__(i, tiered.get("k", slow_source)))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    assert entered.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)

    assert len(calls) == 1
    assert None not in answers
    assert {(a.value, a.age) for a in answers} == {(7, 0)}  # the one refresh's value, for all


def test_a_caller_that_finds_the_shared_level_empty_takes_a_refresh_landed_since_it_began(
    tiered, clock
):
    # Given a value another thread refreshed at this very moment, whose shared copy this caller
    # did not see (it read the shared level just before the refresh landed there: here, the copy
    # is gone from Redis, so the read finds nothing while this process holds the value)
    source = Source()
    assert tiered.get("k", source).level == LIVE
    caches["default"].delete(f"{tiered.namespace}:k")

    # When the caller goes on to refresh
    answer = tiered.get("k", source)

    # Then it takes that refresh instead of computing the same value again
    assert source.calls == 1
    assert (answer.value, answer.age) == (1, 0)


def test_a_caller_that_finds_the_shared_level_empty_refreshes_an_older_value(tiered, clock):
    # Given a value refreshed two minutes ago, its shared copy since lost
    source = Source()
    tiered.get("k", source)
    caches["default"].delete(f"{tiered.namespace}:k")
    clock.now += 120
    source.value = 2

    # When a caller asks for it
    answer = tiered.get("k", source)

    # Then it is fetched again, live, rather than the older copy passed off as a refresh
    assert source.calls == 2
    assert (answer.level, answer.value, answer.age) == (LIVE, 2, 0)


def test_xfetch_refreshes_early_only_near_expiry(clock):
    draws = iter([0.5, 1e-20])
    tiered = TieredCache(
        namespace=f"test-cache-{uuid.uuid4().hex}",
        ttl=300,
        emergency_max_age=7200,
        clock=clock,
        rand=lambda: next(draws),
    )
    source = Source()

    def slow_source() -> int:
        clock.now += 2  # a refresh costs 2 s: the delta XFetch scales by
        return source()

    tiered.get("k", slow_source)
    clock.now += 100  # far from expiry: -2 * ln(0.5) = 1.4 s early is not enough
    assert tiered.get("k", slow_source).level == CACHE
    clock.now += 150  # 50 s before expiry and an unlucky draw: -2 * ln(1e-20) = 92 s early
    assert tiered.get("k", slow_source).level == LIVE
    assert source.calls == 2


def test_with_redis_stopped_the_emergency_level_still_answers(tiered, clock):
    source = Source()
    tiered.get("k", source)
    source.failing = True
    clock.now += 600

    with redis_stopped(settings.REDIS_URL):
        answer = tiered.get("k", source)

    assert (answer.level, answer.value, answer.age) == (EMERGENCY, 1, 600)


def test_with_a_local_ttl_a_process_reuses_its_read_and_sees_another_process_s_value_after_it(
    clock,
):
    namespace = f"test-cache-{uuid.uuid4().hex}"

    def make() -> TieredCache[int]:
        return TieredCache(
            namespace=namespace,
            ttl=300,
            emergency_max_age=7200,
            clock=clock,
            rand=lambda: 1.0,
            local_ttl=1.0,
        )

    here, elsewhere = make(), make()  # two processes sharing one Redis
    source = Source()
    assert here.get("k", source).value == 1
    source.value = 2
    elsewhere.get("k", source, force_refresh=True)  # the other process stores a newer value

    clock.now += 0.5
    within = here.get("k", source)
    clock.now += 0.5
    after = here.get("k", source)

    assert (within.level, within.value, within.age) == (CACHE, 1, 0.5)  # from memory
    assert (after.level, after.value) == (CACHE, 2)  # read again from the shared level
    assert source.calls == 2


def test_a_local_copy_is_never_served_past_its_freshness_nor_after_invalidate(clock):
    tiered = TieredCache(
        namespace=f"test-cache-{uuid.uuid4().hex}",
        ttl=300,
        emergency_max_age=7200,
        clock=clock,
        rand=lambda: 1.0,
        local_ttl=600.0,  # longer than the freshness: the freshness still rules
    )
    source = Source()
    tiered.get("k", source)
    source.value = 2
    clock.now += 301

    stale = tiered.get("k", source)  # the memory copy is past ttl: refreshed from the source
    source.value = 3
    tiered.invalidate("k")
    invalidated = tiered.get("k", source)

    assert (stale.level, stale.value) == (LIVE, 2)
    assert (invalidated.level, invalidated.value) == (LIVE, 3)
    assert source.calls == 3
