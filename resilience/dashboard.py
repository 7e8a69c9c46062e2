"""Reads and operator actions for the admin resilience dashboard (``cryptopay.dashboard_views``):
circuit breakers across the fleet, idempotency figures and whether Redis answers.

Breakers shown are the union of the ones this process holds (``breakers.all()``), the ones the
registered dependencies declare (built by their owners' factories, with the owners' options) and
the ones only other processes use, found by scanning the shared state keys
(``{BREAKER_KEY_PREFIX}:{name}:state``; a breaker used only elsewhere shows while it is open or
isolated). Window figures (failures, calls) are per process
(Polly semantics): for a breaker this process does not use there are none.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings
from django.db.models import Count, Q, Sum
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from resilience import clock, multiprocess
from resilience.breaker import (
    CircuitBreaker,
    CircuitState,
    SharedStore,
    breaker_options_from_settings,
    breakers,
)
from resilience.degradation import registry
from resilience.redis_client import fast_fail_client

logger = logging.getLogger(__name__)

MAX_DISCOVERED = 500


class UnknownBreaker(LookupError):
    pass


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return fast_fail_client(url, timeout=0.5)


def _redis() -> redis.Redis | None:
    return _client(settings.REDIS_URL) if settings.REDIS_URL else None


# --- Redis --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisStatus:
    configured: bool
    reachable: bool
    error: str = ""
    latency_ms: float | None = None


def redis_status() -> RedisStatus:
    client = _redis()
    if client is None:
        return RedisStatus(configured=False, reachable=False, error="not configured (embedded)")
    started = time.perf_counter()
    try:
        client.ping()
    except redis.RedisError as exc:
        return RedisStatus(configured=True, reachable=False, error=_describe(exc))
    return RedisStatus(
        configured=True,
        reachable=True,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"[:300]


# --- breakers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerView:
    name: str
    state: str  # closed, open, half_open, isolated
    retry_after: float | None  # seconds until a probe is allowed; None while isolated
    failures: int | None  # in this process's window; None when this process does not use it
    throughput: int | None
    in_process: bool  # this process holds it (its window figures are shown)
    shared: bool  # its state reaches every process (Redis answered)
    fleet_state: str | None  # what the shared store says (None: no key, i.e. closed)

    @property
    def failure_ratio(self) -> float | None:
        if not self.throughput:
            return None
        return (self.failures or 0) / self.throughput

    @property
    def held_open(self) -> bool:
        return self.state in (CircuitState.ISOLATED, CircuitState.OPEN)


@dataclass(frozen=True)
class BreakerList:
    breakers: list[BreakerView]
    fleet_error: str  # why the fleet's shared states could not be read ("" when they were)


def _declared() -> dict[str, CircuitBreaker]:
    """Breakers the configured dependencies declare, built by their owners."""
    declared: dict[str, CircuitBreaker] = {}
    for dependency in registry.dependencies():
        if not dependency.configured or dependency.breaker is None:
            continue
        try:
            breaker = dependency.breaker()
        except Exception as exc:  # one broken factory must not hide the others
            logger.warning("breaker of %s unavailable: %s", dependency.name, _describe(exc))
            continue
        declared[breaker.name] = breaker
    return declared


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _fleet_states() -> dict[str, tuple[CircuitState, float]]:
    """name -> (state, until) of every breaker open or isolated in the shared store (a closed one
    keeps a record there too, and is left out). Raises RedisError."""
    client = _redis()
    if client is None:
        return {}
    prefix = settings.BREAKER_KEY_PREFIX
    store = SharedStore(client, prefix=prefix)
    head, tail = f"{prefix}:", ":state"
    states: dict[str, tuple[CircuitState, float]] = {}
    for raw in client.scan_iter(match=f"{_glob_escape(prefix)}:*:state", count=500):
        key = raw.decode()
        name = key[len(head) : -len(tail)]
        shared = store.read(name)
        if shared is not None and shared.state is not CircuitState.CLOSED:
            states[name] = (shared.state, shared.until)
        if len(states) >= MAX_DISCOVERED:
            break
    return states


def breaker_list() -> BreakerList:
    local = {breaker.name: breaker for breaker in breakers.all()}
    local.update({name: b for name, b in _declared().items() if name not in local})
    fleet_error = ""
    try:
        fleet = _fleet_states()
    except redis.RedisError as exc:
        fleet, fleet_error = {}, _describe(exc)
    if not settings.REDIS_URL:
        fleet_error = "no Redis (embedded): breakers are per process"
    views = []
    now = time.time()
    for name in sorted(set(local) | set(fleet)):
        fleet_state = fleet[name][0].value if name in fleet else None
        if name in local:
            snap = local[name].snapshot()
            views.append(
                BreakerView(
                    name=name,
                    state=snap["state"],
                    retry_after=snap["retry_after"],
                    failures=snap["failures"],
                    throughput=snap["throughput"],
                    in_process=True,
                    shared=bool(snap["shared"]) and not fleet_error,
                    fleet_state=fleet_state,
                )
            )
            continue
        state, until = fleet[name]
        views.append(
            BreakerView(
                name=name,
                state=state.value,
                retry_after=None if until == float("inf") else max(0.0, until - now),
                failures=None,
                throughput=None,
                in_process=False,
                shared=True,
                fleet_state=fleet_state,
            )
        )
    return BreakerList(breakers=views, fleet_error=fleet_error)


def _breaker_for_action(name: str) -> CircuitBreaker:
    held = {breaker.name: breaker for breaker in breakers.all()}
    if name in held:
        return held[name]
    declared = _declared()
    if name in declared:
        return declared[name]
    try:
        in_fleet = name in _fleet_states()
    except redis.RedisError:
        in_fleet = False
    if not in_fleet:
        raise UnknownBreaker(name)
    # Used only by other processes: act on the shared state through a breaker of our own that
    # does not join this process's registry (its owner's options would be lost there).
    return CircuitBreaker(
        name,
        breaker_options_from_settings(),
        store=breakers.store_factory(),
        ledger=breakers.ledger_factory(),
    )


def breaker_isolate(*, name: str) -> bool:
    """Hold ``name`` open in every process until closed. Returns False when only this process
    could be told (Redis unavailable). Raises UnknownBreaker."""
    breaker = _breaker_for_action(name)
    breaker.isolate()
    return bool(breaker.snapshot()["shared"])


def breaker_close(*, name: str) -> bool:
    """Close ``name`` in every process and reset its statistics; ends an isolate. Returns False
    when only this process could be told (Redis unavailable). Raises UnknownBreaker."""
    breaker = _breaker_for_action(name)
    breaker.close()
    return bool(breaker.snapshot()["shared"])


# --- idempotency --------------------------------------------------------------------------------

IDEMPOTENCY_OUTCOMES = ("executed", "replayed", "conflict", "mismatch", "released")


@dataclass(frozen=True)
class IdempotencyFigures:
    outcomes: dict[str, float]  # requests by outcome since the counters started
    outcomes_scope: str  # "all processes" (multiprocess mode) or "this process"
    keys: int
    in_progress: int
    completed: int
    expired: int  # past expires_at, waiting for the cleanup
    replays: int  # per-key tallies, over the keys still stored
    conflicts: int
    mismatches: int


def counter_values(family_name: str, label: str) -> tuple[dict[str, float], str]:
    """A counter's current values by one label, summed over every process in multiprocess mode
    (read from the shared directory, as /metrics does), else this process's."""
    directory = multiprocess.directory()
    if directory is None:
        collector_registry, scope = REGISTRY, "this process"
    else:
        collector_registry, scope = CollectorRegistry(), "all processes"
        MultiProcessCollector(collector_registry, path=str(directory))
    values: dict[str, float] = defaultdict(float)
    for family in collector_registry.collect():
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name == f"{family_name}_total" and label in sample.labels:
                values[sample.labels[label]] += sample.value
    return dict(values), scope


def idempotency_figures() -> IdempotencyFigures:
    from resilience.models import IdempotencyKey

    outcomes, scope = counter_values("cryptopay_idempotency_requests", "outcome")
    status = IdempotencyKey.Status
    rows = IdempotencyKey.objects.aggregate(
        keys=Count("pk"),
        in_progress=Count("pk", filter=Q(status=status.IN_PROGRESS)),
        completed=Count("pk", filter=Q(status=status.COMPLETED)),
        expired=Count("pk", filter=Q(expires_at__lte=clock.now())),
        replays=Sum("replays"),
        conflicts=Sum("conflicts"),
        mismatches=Sum("mismatches"),
    )
    return IdempotencyFigures(
        outcomes={outcome: outcomes.get(outcome, 0.0) for outcome in IDEMPOTENCY_OUTCOMES},
        outcomes_scope=scope,
        **{name: value or 0 for name, value in rows.items()},
    )
