"""The degradation handler: every outside dependency with its level, and automatic recovery.

Dependencies are registered by the apps that use them (``dependency_source_register`` in their
``AppConfig.ready``); this module knows nothing about payments. A *source* is a function returning
the dependencies configured right now, so the registry follows the settings (a chain added to
``CRYPTOPAY_CHAINS`` appears at the next monitoring run).

Levels (the specification's): Healthy -> Degraded -> Critical -> Unknown, derived from

* the dependency's **health probe** (run by ``dependencies_monitor`` every 30 s): unavailable ->
  Critical; a probe that says "degraded" (e.g. a pool nearly full) -> Degraded;
* its **circuit breaker** (shared state): open, half-open or isolated -> Degraded at least;
* its **error rate over the breaker's sampling window**: failures / calls at or above
  ``DEGRADATION_ERROR_RATIO`` (with the breaker's minimum throughput) -> Degraded;
* **staleness**: no probe within three monitoring intervals (the monitor is not running) ->
  Unknown, as is a probe that crashed.

A *group* (e.g. "exchange-rates", "chain:litecoin") has no probe of its own: it is Healthy when
every member is, Critical when no member is usable and the group says it cannot do without
them, Degraded otherwise.

Recovery (``dependencies_recover``, every 2 minutes) runs the registered action of each dependency
that is Degraded or Critical, logs and counts every attempt (Prometheus counter
``cryptopay_recovery_attempts_total{service, outcome}``) and keeps its outcome and time in
``DependencyState`` (PostgreSQL, with this process's memory as fallback when the database is the
thing that is down). Outcomes: ``recovered`` (Healthy after the attempt), ``mitigated`` (the action
worked, e.g. switched to a backup, but the dependency itself is still not Healthy), ``failed``.

``rotation_recover`` is the generic action for groups of interchangeable members guarded by
breakers (exchange-rate providers, chain nodes): a failing member is taken out of rotation
(its breaker isolated, fleet-wide) while another member answers, i.e. traffic switches to the
backup; a member that answers its probe again is put back (its breaker closed). Only breakers
that recovery isolated itself are closed again: an operator's isolate is left alone.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.dispatch import Signal
from prometheus_client import Counter

from resilience import clock
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.redis_client import redis_asked_anyway
from resilience.threads import closing_connections

logger = logging.getLogger(__name__)

# Sent when a dependency's level changes: sender=dependency name; kwargs from_level, to_level,
# reason. For the metrics and the dashboard.
dependency_level_changed = Signal()

RECOVERY_ATTEMPTS = Counter(
    "cryptopay_recovery_attempts_total",
    "Automatic recovery attempts per dependency (service) and outcome.",
    ["service", "outcome"],
)


class Level(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


RECOVERED, MITIGATED, FAILED = "recovered", "mitigated", "failed"
ProbeStatus = Literal["ok", "degraded", "unavailable"]


@dataclass(frozen=True)
class Probe:
    """What one health probe found. ``diagnostics`` must hold nothing secret (no credentials)."""

    status: ProbeStatus
    message: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    duration_ms: int | None = None

    @classmethod
    def ok(cls, message: str = "", /, **diagnostics: Any) -> Probe:
        return cls("ok", message, diagnostics)

    @classmethod
    def degraded(cls, message: str, /, **diagnostics: Any) -> Probe:
        return cls("degraded", message, diagnostics)

    @classmethod
    def unavailable(cls, message: str, /, **diagnostics: Any) -> Probe:
        return cls("unavailable", message, diagnostics)


@dataclass(frozen=True)
class RecoveryResult:
    outcome: str  # recovered, mitigated or failed (recovered is decided after a fresh probe)
    detail: str


@dataclass
class RecoveryContext:
    """What a recovery action is given: fresh probes of the dependency (and its members)."""

    dependency: Dependency
    level: Level
    probes: dict[str, Probe]
    members: list[Dependency]


@dataclass(frozen=True)
class Dependency:
    name: str
    kind: str  # database, redis, broker, rates, chain, ... (for grouping on the dashboard)
    description: str = ""
    probe: Callable[[], Probe] | None = None  # None: a group, judged by its members
    # Health endpoints that include it: "ready" (/health/ready), "external" (/health/external).
    tags: frozenset[str] = frozenset()
    # The breaker guarding calls to it (a factory: breakers are built by their owners).
    breaker: Callable[[], CircuitBreaker] | None = None
    members: tuple[str, ...] = ()
    # A group is Critical when no member is usable, unless something else still answers for it
    # (exchange rates: the cache levels and the static fallback).
    critical_without_members: bool = True
    recover: Callable[[RecoveryContext], RecoveryResult] | None = None
    # Probes using the database run in the caller's thread (Django connections are per thread).
    uses_database: bool = False
    # False: not part of this deployment (e.g. Redis in embedded mode); reported, never probed.
    configured: bool = True

    @property
    def is_group(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True)
class OperationChain:
    """An operation's fallback chain, primary first (for operators; the code implements it)."""

    name: str
    steps: tuple[str, ...]
    dependency: str  # whose level says which step is in use
    # Which step is in use, given every dependency's level.
    current: Callable[[dict[str, Level]], str] | None = None


Source = Callable[[], Iterable[Dependency | OperationChain]]


class DependencyRegistry:
    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}
        self._lock = threading.Lock()

    def register(self, key: str, source: Source) -> None:
        """Register (or replace) a source of dependencies under ``key`` (idempotent)."""
        with self._lock:
            self._sources[key] = source

    def unregister(self, key: str) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def _items(self) -> list[Dependency | OperationChain]:
        with self._lock:
            sources = list(self._sources.items())
        items: list[Dependency | OperationChain] = []
        for key, source in sources:
            try:
                items.extend(source())
            except Exception:
                logger.exception("dependency source %s failed; its dependencies are skipped", key)
        return items

    def dependencies(self) -> list[Dependency]:
        return [item for item in self._items() if isinstance(item, Dependency)]

    def operation_chains(self) -> list[OperationChain]:
        return [item for item in self._items() if isinstance(item, OperationChain)]

    def get(self, name: str) -> Dependency | None:
        return next((d for d in self.dependencies() if d.name == name), None)


registry = DependencyRegistry()


def dependency_source_register(*, key: str, source: Source) -> None:
    registry.register(key, source)


# --- probes -------------------------------------------------------------------------------------


def probe_run(*, dependency: Dependency) -> Probe:
    """Run one probe, timed; an exception is an unavailable dependency, never an error here."""
    assert dependency.probe is not None
    started = time.perf_counter()
    try:
        # A probe asks even a Redis that this process holds after a timeout: it is how the
        # monitor and the readiness check learn that Redis answers again (redis_client.py).
        with redis_asked_anyway():
            result = dependency.probe()
    except Exception as exc:
        result = Probe.unavailable(f"{exc.__class__.__name__}: {exc}"[:300])
    return replace(result, duration_ms=round((time.perf_counter() - started) * 1000))


def probes_run(*, dependencies: list[Dependency]) -> dict[str, Probe]:
    """Probe in parallel (each bounded by HEALTH_PROBE_TIMEOUT); database probes in this thread."""
    timeout = settings.HEALTH_PROBE_TIMEOUT.total_seconds()
    leaves = [d for d in dependencies if d.probe is not None and d.configured]
    results: dict[str, Probe] = {}
    threaded = [d for d in leaves if not d.uses_database]
    pool = ThreadPoolExecutor(
        max_workers=max(1, min(16, len(threaded))), thread_name_prefix="probe"
    )
    try:
        probe = closing_connections(probe_run)
        futures = {d.name: pool.submit(probe, dependency=d) for d in threaded}
        for dependency in leaves:
            if dependency.uses_database:
                results[dependency.name] = probe_run(dependency=dependency)
        deadline = time.monotonic() + timeout
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                results[name] = Probe.unavailable(
                    f"no answer within {timeout:g} s", duration_ms=round(timeout * 1000)
                )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


# --- levels -------------------------------------------------------------------------------------


def breaker_view(dependency: Dependency) -> dict[str, Any] | None:
    """The breaker's snapshot (state, window figures), or None without one."""
    if dependency.breaker is None:
        return None
    try:
        return dependency.breaker().snapshot()
    except Exception as exc:  # a broken breaker store must not stop the monitor
        logger.warning("breaker of %s unreadable: %s", dependency.name, exc)
        return None


def level_from(
    *, probe: Probe | None, breaker: dict[str, Any] | None, error_ratio: float, min_calls: int
) -> tuple[Level, str]:
    """A leaf dependency's level and the reason for it (pure; see the module docstring)."""
    if probe is None:
        return Level.UNKNOWN, "not probed yet"
    if probe.status == "unavailable":
        return Level.CRITICAL, probe.message or "probe failed"
    if breaker is not None:
        state = breaker["state"]
        if state != CircuitState.CLOSED:
            return Level.DEGRADED, f"answers its probe, but its circuit is {state}"
        calls, failures = breaker["throughput"], breaker["failures"]
        if calls >= min_calls and calls and failures / calls >= error_ratio:
            return Level.DEGRADED, f"{failures} of {calls} calls failed in the breaker window"
    if probe.status == "degraded":
        return Level.DEGRADED, probe.message
    return Level.HEALTHY, probe.message


def group_level(*, dependency: Dependency, member_levels: dict[str, Level]) -> tuple[Level, str]:
    levels = [member_levels.get(name, Level.UNKNOWN) for name in dependency.members]
    if levels and all(level is Level.HEALTHY for level in levels):
        return Level.HEALTHY, f"all {len(levels)} healthy"
    usable = [
        name
        for name in dependency.members
        if member_levels.get(name) in (Level.HEALTHY, Level.DEGRADED)
    ]
    hurting = ", ".join(
        f"{name} {member_levels.get(name, Level.UNKNOWN)}"
        for name in dependency.members
        if member_levels.get(name) is not Level.HEALTHY
    )
    if not usable and all(level is Level.UNKNOWN for level in levels):
        return Level.UNKNOWN, "no member probed yet"
    if not usable and dependency.critical_without_members:
        return Level.CRITICAL, f"no member usable: {hurting}"
    if not usable:
        return Level.DEGRADED, f"no member usable, fallbacks answer: {hurting}"
    return Level.DEGRADED, hurting


def _evaluate(
    dependencies: list[Dependency], probes: dict[str, Probe]
) -> dict[str, tuple[Level, str]]:
    error_ratio = float(settings.DEGRADATION_ERROR_RATIO)
    min_calls = settings.BREAKER_MINIMUM_THROUGHPUT
    levels: dict[str, tuple[Level, str]] = {}
    for dependency in dependencies:
        if dependency.configured and not dependency.is_group:
            levels[dependency.name] = level_from(
                probe=probes.get(dependency.name),
                breaker=breaker_view(dependency),
                error_ratio=error_ratio,
                min_calls=min_calls,
            )
    for dependency in dependencies:
        if dependency.configured and dependency.is_group:
            levels[dependency.name] = group_level(
                dependency=dependency,
                member_levels={name: level for name, (level, _) in levels.items()},
            )
    return levels


# --- state (PostgreSQL, this process's memory as fallback) --------------------------------------

_local_states: dict[str, dict[str, Any]] = {}
_local_lock = threading.Lock()

STATE_FIELDS = (
    "kind", "level", "reason", "level_since", "checked_at", "probe_ms", "diagnostics",
    "recovery_isolated", "recovery_attempts", "recovery_failures", "last_recovery_at",
    "last_recovery_outcome", "last_recovery_detail",
)  # fmt: skip


def state_read_all() -> dict[str, dict[str, Any]]:
    """Every stored state by name: from the database, else this process's copy."""
    from resilience.models import DependencyState

    try:
        rows = {row["name"]: row for row in DependencyState.objects.values("name", *STATE_FIELDS)}
    except DatabaseError as exc:
        logger.warning("dependency states unreadable (%s); using this process's copy", exc)
        close_old_connections()
        with _local_lock:
            return {name: dict(state) for name, state in _local_states.items()}
    with _local_lock:
        # Kept here only while the database refused it, so newer than the row.
        for name, state in _local_states.items():
            rows[name] = {**rows.get(name, {}), **state, "name": name}
    return rows


def _state_write(name: str, values: dict[str, Any]) -> None:
    from resilience.models import DependencyState

    with _local_lock:
        # Anything an earlier write could not store goes along with this one.
        merged = _local_states[name] = {**_local_states.get(name, {}), **values}
    try:
        DependencyState.objects.update_or_create(name=name, defaults=merged)
    except DatabaseError as exc:
        logger.warning("dependency state %s kept in memory only (%s)", name, exc)
        close_old_connections()
        return
    with _local_lock:  # stored: the database is the truth again
        _local_states.pop(name, None)


def _alert(name: str, previous: str | None, level: Level, reason: str) -> None:
    if previous == level.value:
        return
    log = {
        Level.CRITICAL: logger.error,
        Level.DEGRADED: logger.warning,
        Level.UNKNOWN: logger.warning,
        Level.HEALTHY: logger.info,
    }[level]
    log("dependency %s: %s -> %s (%s)", name, previous or "new", level.value, reason)
    dependency_level_changed.send(
        sender=name, from_level=previous, to_level=level.value, reason=reason
    )


def _record_levels(
    dependencies: list[Dependency],
    probes: dict[str, Probe],
    levels: dict[str, tuple[Level, str]],
    stored: dict[str, dict[str, Any]],
    now: datetime,
) -> None:
    for dependency in dependencies:
        if dependency.name not in levels:
            continue
        level, reason = levels[dependency.name]
        previous = stored.get(dependency.name, {})
        probe = probes.get(dependency.name)
        diagnostics = {
            "probe": probe.status if probe else None,
            **(probe.diagnostics if probe else {}),
        }
        breaker = breaker_view(dependency)
        if breaker is not None:
            diagnostics["breaker"] = {
                k: breaker[k] for k in ("state", "throughput", "failures", "retry_after")
            }
        changed = previous.get("level") != level.value
        _state_write(
            dependency.name,
            {
                "kind": dependency.kind,
                "level": level.value,
                "reason": reason[:500],
                "checked_at": now,
                "level_since": now if changed else previous.get("level_since") or now,
                "probe_ms": probe.duration_ms if probe else None,
                "diagnostics": diagnostics,
            },
        )
        _alert(dependency.name, previous.get("level"), level, reason)


# --- the two periodic jobs ----------------------------------------------------------------------


def dependencies_monitor() -> dict[str, str]:
    """Probe every configured dependency, update levels, alert on changes. Returns name -> level."""
    dependencies = [d for d in registry.dependencies() if d.configured]
    probes = probes_run(dependencies=dependencies)
    levels = _evaluate(dependencies, probes)
    _record_levels(dependencies, probes, levels, state_read_all(), clock.now())
    return {name: level.value for name, (level, _) in levels.items()}


def _with_members(dependency: Dependency, everything: list[Dependency]) -> list[Dependency]:
    by_name = {d.name: d for d in everything}
    return [dependency, *(by_name[m] for m in dependency.members if m in by_name)]


def dependency_recover(*, dependency: Dependency, level: Level | None = None) -> RecoveryResult:
    """One recovery attempt for ``dependency``: fresh probes, the action, a fresh judgement."""
    if dependency.recover is None:
        raise ValueError(f"{dependency.name} has no recovery action")
    everything = registry.dependencies()
    involved = _with_members(dependency, everything)
    members = involved[1:]
    probes = probes_run(dependencies=involved)
    before = _evaluate(involved, probes)
    context = RecoveryContext(
        dependency=dependency,
        level=level or before[dependency.name][0],
        probes=probes,
        members=members,
    )
    started = time.perf_counter()
    try:
        result = dependency.recover(context)
    except Exception as exc:
        logger.exception("recovery of %s raised", dependency.name)
        result = RecoveryResult(FAILED, f"{exc.__class__.__name__}: {exc}"[:500])
    probes = probes_run(dependencies=involved)
    after = _evaluate(involved, probes)
    if after[dependency.name][0] is Level.HEALTHY and result.outcome != FAILED:
        result = RecoveryResult(RECOVERED, result.detail)
    elapsed = time.perf_counter() - started
    now = clock.now()
    stored = state_read_all()
    _record_levels(involved, probes, after, stored, now)
    previous = stored.get(dependency.name, {})
    _state_write(
        dependency.name,
        {
            "recovery_attempts": (previous.get("recovery_attempts") or 0) + 1,
            "recovery_failures": (previous.get("recovery_failures") or 0)
            + (result.outcome == FAILED),
            "last_recovery_at": now,
            "last_recovery_outcome": result.outcome,
            "last_recovery_detail": result.detail[:500],
        },
    )
    RECOVERY_ATTEMPTS.labels(service=dependency.name, outcome=result.outcome).inc()
    log = logger.error if result.outcome == FAILED else logger.warning
    if result.outcome == RECOVERED:
        log = logger.info
    log(
        "recovery of %s (%s): %s in %.2f s: %s",
        dependency.name,
        context.level.value,
        result.outcome,
        elapsed,
        result.detail,
    )
    return result


def dependencies_recover() -> dict[str, str]:
    """Attempt recovery of every Degraded or Critical dependency that has an action.

    Levels come from the last monitoring run (stored); returns name -> outcome.
    """
    stored = state_read_all()
    outcomes: dict[str, str] = {}
    for dependency in registry.dependencies():
        if not dependency.configured or dependency.recover is None:
            continue
        level = stored.get(dependency.name, {}).get("level")
        if level not in (Level.DEGRADED, Level.CRITICAL):
            continue
        outcomes[dependency.name] = dependency_recover(
            dependency=dependency, level=Level(level)
        ).outcome
    return outcomes


# --- generic recovery: rotation of interchangeable members --------------------------------------


def _mark_isolated(name: str, isolated: bool) -> None:
    _state_write(name, {"recovery_isolated": isolated})


def rotation_recover(context: RecoveryContext) -> tuple[list[str], list[str], list[str]]:
    """Switch traffic away from failing members to answering ones, and back when they answer.

    Returns (taken out, put back, problems). A failing member is taken out (its breaker isolated
    everywhere) only while another member in rotation answers: with nothing to switch to, taking
    members out would only stop the breakers' own half-open probes.
    """
    stored = state_read_all()
    answering = {
        m.name
        for m in context.members
        if context.probes.get(m.name) is not None and context.probes[m.name].status != "unavailable"
    }
    taken_out: list[str] = []
    put_back: list[str] = []
    problems: list[str] = []
    for member in context.members:
        if member.breaker is None:
            continue
        breaker = member.breaker()
        ours = bool(stored.get(member.name, {}).get("recovery_isolated"))
        state = breaker.state
        if member.name in answering:
            if state is CircuitState.ISOLATED and not ours:
                problems.append(f"{member.name} answers but an operator isolated it")
            elif state is not CircuitState.CLOSED:
                breaker.close()
                put_back.append(member.name)
            if ours:
                _mark_isolated(member.name, False)
            continue
        if state is CircuitState.ISOLATED:
            continue  # already out (by us or an operator)
        in_rotation_answering = [
            m.name
            for m in context.members
            if m.name in answering and m.name != member.name and m.breaker is not None
        ]
        if not in_rotation_answering:
            problems.append(f"{member.name} fails and no other member answers")
            continue
        breaker.isolate()
        _mark_isolated(member.name, True)
        taken_out.append(member.name)
    return taken_out, put_back, problems


def rotation_summary(taken_out: list[str], put_back: list[str], problems: list[str]) -> str:
    parts = []
    if taken_out:
        parts.append(f"switched away from {', '.join(taken_out)}")
    if put_back:
        parts.append(f"back in rotation: {', '.join(put_back)}")
    parts.extend(problems)
    return "; ".join(parts) or "nothing to change"
