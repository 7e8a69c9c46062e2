"""Levels, monitoring, recovery bookkeeping and the generic recovery actions (real PostgreSQL and
Redis; dependencies registered by the test are real functions, not mocks)."""

from __future__ import annotations

import logging
import pickle
from datetime import timedelta
from functools import partial

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from resilience import degradation
from resilience.breaker import BreakerOptions, CircuitBreaker, CircuitState
from resilience.degradation import (
    Dependency,
    Level,
    Probe,
    RecoveryContext,
    RecoveryResult,
    dependencies_monitor,
    dependencies_recover,
    group_level,
    level_from,
    registry,
    rotation_recover,
)
from resilience.models import DependencyState
from resilience.probes import database_recover, redis_recover
from resilience.redis_client import fast_fail_client
from resilience.selectors import dependency_levels, dependency_list
from tests.resilience.helpers import recovery_count

CLOSED = {"state": "closed", "throughput": 0, "failures": 0, "retry_after": None}


@pytest.fixture
def test_dependencies():
    """A registry source the test controls: name -> Probe (or a dependency to add)."""
    probes: dict[str, Probe] = {}
    extra: list[Dependency] = []

    def source() -> list[Dependency]:
        made = [
            Dependency(name=name, kind="test", probe=partial(probes.__getitem__, name))
            for name in probes
        ]
        return made + extra

    registry.register("tests", source)
    degradation._local_states.clear()
    yield probes, extra
    registry.unregister("tests")
    degradation._local_states.clear()


# --- levels -------------------------------------------------------------------------------------


def test_given_a_failed_probe_when_judged_then_critical():
    level, reason = level_from(
        probe=Probe.unavailable("refused"), breaker=CLOSED, error_ratio=0.1, min_calls=5
    )
    assert (level, reason) == (Level.CRITICAL, "refused")


def test_given_an_answering_probe_and_an_open_breaker_when_judged_then_degraded():
    breaker = {**CLOSED, "state": "open"}
    level, reason = level_from(probe=Probe.ok(), breaker=breaker, error_ratio=0.1, min_calls=5)
    assert level is Level.DEGRADED
    assert "circuit is open" in reason


def _succeed_or_fail(ok: bool) -> float | None:
    return None if ok else 1 / 0


def _recovery_of(name: str) -> RecoveryContext:
    return RecoveryContext(
        dependency=Dependency(name=name, kind=name), level=Level.CRITICAL, probes={}, members=[]
    )


def test_given_errors_over_the_breaker_window_below_its_trip_ratio_when_judged_then_degraded():
    breaker = CircuitBreaker("test:errors", BreakerOptions(failure_ratio=0.5, minimum_throughput=5))
    for outcome in [True] * 8 + [False] * 2:  # 20 % failures: degraded, not tripped
        try:
            breaker.call(_succeed_or_fail, outcome)
        except ZeroDivisionError:
            pass
    snapshot = breaker.snapshot()

    level, reason = level_from(probe=Probe.ok(), breaker=snapshot, error_ratio=0.1, min_calls=5)

    assert snapshot["state"] == "closed"
    assert (level, reason) == (Level.DEGRADED, "2 of 10 calls failed in the breaker window")


def test_given_few_errors_or_a_degraded_probe_when_judged_then_healthy_or_degraded():
    few = {**CLOSED, "throughput": 3, "failures": 1}  # below the minimum throughput
    assert level_from(probe=Probe.ok(), breaker=few, error_ratio=0.1, min_calls=5)[0] is (
        Level.HEALTHY
    )
    assert level_from(probe=Probe.degraded("slow"), breaker=None, error_ratio=0.1, min_calls=5) == (
        Level.DEGRADED,
        "slow",
    )
    assert level_from(probe=None, breaker=None, error_ratio=0.1, min_calls=5)[0] is Level.UNKNOWN


def test_given_members_when_a_group_is_judged_then_its_level_follows_them():
    group = Dependency(name="g", kind="test", members=("a", "b"))
    lenient = Dependency(name="g", kind="test", members=("a", "b"), critical_without_members=False)
    H, D, C = Level.HEALTHY, Level.DEGRADED, Level.CRITICAL

    assert group_level(dependency=group, member_levels={"a": H, "b": H})[0] is H
    assert group_level(dependency=group, member_levels={"a": C, "b": H})[0] is D
    assert group_level(dependency=group, member_levels={"a": C, "b": D})[0] is D
    assert group_level(dependency=group, member_levels={"a": C, "b": C})[0] is C
    assert group_level(dependency=lenient, member_levels={"a": C, "b": C})[0] is D
    assert group_level(dependency=group, member_levels={})[0] is Level.UNKNOWN


# --- monitoring ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_given_a_level_change_when_monitored_then_stored_and_alerted_once(
    test_dependencies, caplog, frozen_clock
):
    probes, _ = test_dependencies
    probes["test:thing"] = Probe.ok()
    dependencies_monitor()
    probes["test:thing"] = Probe.unavailable("connection refused")
    caplog.set_level(logging.WARNING, logger="resilience.degradation")

    first = dependencies_monitor()
    second = dependencies_monitor()

    assert first["test:thing"] == second["test:thing"] == "critical"
    alerts = [r for r in caplog.records if "test:thing: healthy -> critical" in r.getMessage()]
    assert len(alerts) == 1 and alerts[0].levelno == logging.ERROR
    state = DependencyState.objects.get(name="test:thing")
    assert (state.level, state.reason, state.checked_at) == (
        "critical",
        "connection refused",
        frozen_clock.now(),
    )


@pytest.mark.django_db
def test_given_no_monitoring_for_three_intervals_when_read_then_unknown(
    test_dependencies, frozen_clock
):
    probes, _ = test_dependencies
    probes["test:thing"] = Probe.ok()
    dependencies_monitor()
    assert dependency_levels()["test:thing"] is Level.HEALTHY

    frozen_clock.advance(settings.HEALTH_MONITOR_INTERVAL * 3 + timedelta(seconds=1))

    assert dependency_levels()["test:thing"] is Level.UNKNOWN


# --- recovery bookkeeping -----------------------------------------------------------------------


@pytest.mark.django_db
def test_given_a_degraded_dependency_when_recovery_runs_then_the_attempt_is_counted_and_kept(
    test_dependencies, frozen_clock
):
    probes, extra = test_dependencies
    probes["test:fixable"] = Probe.unavailable("down")
    actions: list[str] = []

    def fix(context):
        actions.append(context.level.value)
        probes["test:fixable"] = Probe.ok()
        return RecoveryResult("mitigated", "restarted it")

    extra.append(
        Dependency(name="test:fixable-group", kind="test", members=("test:fixable",), recover=fix)
    )
    dependencies_monitor()
    before = recovery_count("test:fixable-group", "recovered")

    outcomes = dependencies_recover()
    again = dependencies_recover()  # healthy now: nothing to do

    assert outcomes == {"test:fixable-group": "recovered"}
    assert again == {}
    assert actions == ["critical"]
    assert recovery_count("test:fixable-group", "recovered") == before + 1
    view = next(v for v in dependency_list() if v.name == "test:fixable-group")
    assert (view.level, view.recovery_attempts, view.last_recovery_outcome) == (
        Level.HEALTHY,
        1,
        "recovered",
    )
    assert (view.last_recovery_at, view.last_recovery_detail) == (
        frozen_clock.now(),
        "restarted it",
    )


@pytest.mark.django_db
def test_given_a_recovery_that_raises_when_recovery_runs_then_it_counts_as_failed(
    test_dependencies,
):
    probes, extra = test_dependencies
    probes["test:broken"] = Probe.unavailable("down")

    def explode(context):
        raise RuntimeError("no way")

    extra.append(
        Dependency(name="test:broken-group", kind="test", members=("test:broken",), recover=explode)
    )
    dependencies_monitor()
    before = recovery_count("test:broken-group", "failed")

    assert dependencies_recover() == {"test:broken-group": "failed"}

    assert recovery_count("test:broken-group", "failed") == before + 1
    state = DependencyState.objects.get(name="test:broken-group")
    assert (state.recovery_failures, state.last_recovery_detail) == (1, "RuntimeError: no way")


# --- recovery actions ---------------------------------------------------------------------------


def test_given_a_failing_member_and_an_answering_one_when_rotated_then_traffic_switches_and_back(
    test_dependencies, db
):
    first = CircuitBreaker("test:node-1")
    second = CircuitBreaker("test:node-2")
    members = [
        Dependency(name="test:node-1", kind="test", breaker=lambda: first),
        Dependency(name="test:node-2", kind="test", breaker=lambda: second),
    ]
    group = Dependency(name="test:nodes", kind="test", members=("test:node-1", "test:node-2"))
    context = degradation.RecoveryContext(
        dependency=group,
        level=Level.DEGRADED,
        probes={"test:node-1": Probe.unavailable("refused"), "test:node-2": Probe.ok()},
        members=members,
    )

    assert rotation_recover(context) == (["test:node-1"], [], [])
    assert (first.state, second.state) == (CircuitState.ISOLATED, CircuitState.CLOSED)

    context.probes["test:node-1"] = Probe.ok()
    assert rotation_recover(context) == ([], ["test:node-1"], [])
    assert first.state is CircuitState.CLOSED


def test_given_every_member_failing_when_rotated_then_nothing_is_taken_out(db):
    first, second = CircuitBreaker("test:a"), CircuitBreaker("test:b")
    members = [
        Dependency(name="test:a", kind="test", breaker=lambda: first),
        Dependency(name="test:b", kind="test", breaker=lambda: second),
    ]
    context = degradation.RecoveryContext(
        dependency=Dependency(name="test:ab", kind="test", members=("test:a", "test:b")),
        level=Level.CRITICAL,
        probes={"test:a": Probe.unavailable("x"), "test:b": Probe.unavailable("y")},
        members=members,
    )

    taken_out, put_back, problems = rotation_recover(context)

    assert (taken_out, put_back) == ([], [])
    assert problems == [
        "test:a fails and no other member answers",
        "test:b fails and no other member answers",
    ]
    assert (first.state, second.state) == (CircuitState.CLOSED, CircuitState.CLOSED)


def test_given_an_operator_isolated_member_when_it_answers_then_recovery_leaves_it_isolated(db):
    operator = CircuitBreaker("test:held")
    operator.isolate()
    members = [Dependency(name="test:held", kind="test", breaker=lambda: operator)]
    context = degradation.RecoveryContext(
        dependency=Dependency(name="test:h", kind="test", members=("test:held",)),
        level=Level.DEGRADED,
        probes={"test:held": Probe.ok()},
        members=members,
    )

    assert rotation_recover(context)[2] == ["test:held answers but an operator isolated it"]
    assert operator.state is CircuitState.ISOLATED


@pytest.mark.django_db(transaction=True)
def test_given_the_database_when_recovered_then_connections_reopen_and_the_pool_is_checked():
    connection.ensure_connection()
    old = connection.connection

    result = database_recover(_recovery_of("database"))

    assert result.outcome == "mitigated"
    assert result.detail.startswith("closed and reopened connections; pool: ")
    assert "server connections in use" in result.detail
    assert connection.connection is not None and connection.connection is not old


def test_given_corrupted_values_in_our_prefixes_when_redis_recovers_then_only_they_are_removed():
    client = fast_fail_client(settings.REDIS_URL, timeout=2)
    good_key = cache.make_key("health-test:good")
    bad_cache_key = cache.make_key("health-test:bad")
    bad_breaker_key = f"{settings.BREAKER_KEY_PREFIX}:test:corrupt:state"
    foreign_key = "someone-else:health-test:bad"
    cache.set("health-test:good", {"a": 1}, 60)
    client.set(bad_cache_key, b"\x80\x05not a pickle")
    client.set(bad_breaker_key, b"{not json")
    client.set(foreign_key, b"\x80\x05not a pickle")
    # A class that a deploy removed: the pickle no longer loads.
    client.set(cache.make_key("health-test:gone"), pickle.dumps(Probe.ok())[:-5])
    try:
        result = redis_recover(_recovery_of("redis"))

        assert result.outcome == "mitigated"
        assert "3 corrupted of" in result.detail
        assert cache.get("health-test:good") == {"a": 1}
        assert client.exists(bad_cache_key, bad_breaker_key) == 0
        assert client.exists(foreign_key) == 1
    finally:
        client.delete(good_key, bad_cache_key, bad_breaker_key, foreign_key)
