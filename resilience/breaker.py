"""A ratio circuit breaker with Polly v8 semantics whose open state is shared across processes.

Why our own: no Python library has a failure-ratio window with minimum throughput, one half-open
probe across a fleet, a held isolate, or a retry-after (REFERENCE.md §1: pybreaker counts
consecutive failures and locks around every call, purgatory lets every half-open call through,
aiobreaker is unmaintained). Polly and resilience4j have the semantics but share nothing.

Semantics (Polly v8 advanced breaker):

* Closed: outcomes go into a rolling window of ``sampling_duration`` split into 10 buckets. When a
  handled failure arrives and ``throughput >= minimum_throughput`` and
  ``failures / throughput >= failure_ratio``, the circuit opens. Successes never trip it.
* Open: calls are rejected with ``BrokenCircuitError(retry_after=...)`` until ``break_duration``
  has passed. The first call after that becomes the single half-open probe (no timer).
* Half-open: exactly one probe at a time across all processes; everyone else is rejected. A handled
  failure reopens, any other outcome closes and resets the statistics.
* Isolated: held open by an operator until ``close()``; rejects with ``IsolatedCircuitError``.

Sharing: the health window stays in each process (like Polly). What is shared through Redis is
the open/isolated state (one key per breaker) and the half-open probe permit (``SET NX PX`` with a
lease, so a hung probe cannot hold the circuit half-open). A process reads the shared state at
most every ``sync_interval`` (0.25 s by default), so when one process opens a breaker every other
process fails fast within that interval, while a closed breaker costs no network round trip per
call. When Redis is unreachable each process goes on with its own local state and retries Redis
after ``redis_retry_interval``; a Redis error never lets a call through an open circuit that this
process knows about, and never blocks a call for longer than the client's short socket timeout.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import redis
from django.dispatch import Signal
from prometheus_client import Counter

from resilience.redis_client import fast_fail_client

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Sent on every state change: sender=breaker name; kwargs from_state, to_state, failures,
# throughput, adopted (True when this process only took over a change another process made, as
# read from the shared state). resilience.metrics turns these into metrics.
circuit_state_changed = Signal()

# Counted here rather than from the signal: they happen without a state change. Only the failure
# and rejection paths pay for them, never a successful call through a closed circuit.
FAILURES = Counter(
    "cryptopay_circuit_breaker_failures", "Handled failures recorded by a breaker.", ["breaker"]
)
REJECTIONS = Counter(
    "cryptopay_circuit_breaker_rejections",
    "Calls refused without being made (open, isolated, or half-open with the probe taken).",
    ["breaker"],
)

BUCKETS = 10


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ISOLATED = "isolated"


class BrokenCircuitError(Exception):
    """The circuit is open (or another caller holds the half-open probe): fail fast."""

    def __init__(self, name: str, retry_after: float, state: CircuitState) -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        self.state = state
        super().__init__(f"circuit {name!r} is {state}; retry after {self.retry_after:.1f} s")


class IsolatedCircuitError(BrokenCircuitError):
    """The circuit was isolated by an operator and stays open until closed."""


def default_is_failure(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


@dataclass(frozen=True)
class BreakerOptions:
    failure_ratio: float = 0.5
    sampling_duration: float = 30.0  # seconds
    minimum_throughput: int = 5
    break_duration: float = 60.0  # seconds
    # How long a half-open probe may hold the fleet-wide permit before another caller may probe.
    probe_lease: float = 30.0
    # How stale this process's view of the shared state may be.
    sync_interval: float = 0.25
    # After a Redis error, how long to stay on local state before trying Redis again.
    redis_retry_interval: float = 5.0
    is_failure: Callable[[BaseException], bool] = default_is_failure

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.minimum_throughput < 2:
            raise ValueError("minimum_throughput must be at least 2 (as in Polly)")
        if self.sampling_duration <= 0 or self.break_duration <= 0:
            raise ValueError("durations must be positive")


@dataclass
class _Bucket:
    start: float
    successes: int = 0
    failures: int = 0


class HealthWindow:
    """Outcomes over the last ``duration`` seconds in ``BUCKETS`` rolling buckets."""

    def __init__(self, duration: float) -> None:
        self._width = duration / BUCKETS
        self._duration = duration
        self._buckets: list[_Bucket] = []

    def _current(self, now: float) -> _Bucket:
        buckets = self._buckets
        if buckets and now < buckets[-1].start + self._width:
            return buckets[-1]  # the common case: no allocation, no expiry scan
        self._expire(now)
        buckets.append(_Bucket(start=now))
        return buckets[-1]

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0].start + self._duration <= now:
            self._buckets.pop(0)

    def record(self, *, failure: bool, now: float) -> None:
        bucket = self._current(now)
        if failure:
            bucket.failures += 1
        else:
            bucket.successes += 1

    def stats(self, now: float) -> tuple[int, int]:
        """(throughput, failures) of the live buckets."""
        self._expire(now)
        failures = sum(b.failures for b in self._buckets)
        return failures + sum(b.successes for b in self._buckets), failures

    def reset(self) -> None:
        self._buckets.clear()


@dataclass
class SharedState:
    state: CircuitState
    until: float  # epoch seconds the break ends (inf while isolated)


class SharedStore:
    """The fleet-wide part of a breaker in Redis: state key and probe permit."""

    _CLOSE_SCRIPT = """
    local v = redis.call('GET', KEYS[1])
    if v and string.find(v, '"isolated"', 1, true) and ARGV[1] == '0' then return 0 end
    redis.call('DEL', KEYS[1])
    redis.call('DEL', KEYS[2])
    return 1
    """

    def __init__(self, client: redis.Redis, prefix: str = "cryptopay:breaker") -> None:
        self._client = client
        self._prefix = prefix
        self._close = client.register_script(self._CLOSE_SCRIPT)

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self._prefix}:{name}:state", f"{self._prefix}:{name}:probe"

    def read(self, name: str) -> SharedState | None:
        raw = self._client.get(self._keys(name)[0])
        if raw is None:
            return None
        data = json.loads(raw)
        until = float("inf") if data["until"] is None else float(data["until"])
        return SharedState(state=CircuitState(data["state"]), until=until)

    def write(self, name: str, shared: SharedState, keep_for: float) -> None:
        until = None if shared.until == float("inf") else shared.until
        payload = json.dumps({"state": shared.state.value, "until": until})
        state_key, probe_key = self._keys(name)
        pipe = self._client.pipeline()
        if shared.state is CircuitState.ISOLATED:
            pipe.set(state_key, payload)
        else:
            pipe.set(state_key, payload, px=int(keep_for * 1000))
        pipe.delete(probe_key)
        pipe.execute()

    def acquire_probe(self, name: str, token: str, lease: float) -> bool:
        return bool(self._client.set(self._keys(name)[1], token, nx=True, px=int(lease * 1000)))

    def probe_lease_left(self, name: str) -> float:
        ttl = self._client.pttl(self._keys(name)[1])
        return max(0.0, ttl / 1000) if ttl and ttl > 0 else 0.0

    def clear(self, name: str, *, force: bool) -> bool:
        """Delete the state (closing the circuit everywhere); an isolate survives unless forced."""
        return bool(self._close(keys=list(self._keys(name)), args=["1" if force else "0"]))


class CircuitBreaker:
    """Guard calls to one outside dependency. Thread-safe; one instance per name per process."""

    def __init__(
        self,
        name: str,
        options: BreakerOptions | None = None,
        *,
        store: SharedStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.options = options or BreakerOptions()
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._window = HealthWindow(self.options.sampling_duration)
        self._state = CircuitState.CLOSED
        self._until = 0.0
        self._probe_token: str | None = None
        self._probe_seq = 0
        self._synced_at = float("-inf")
        self._redis_down_until = float("-inf")

    # --- public API ---------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        with self._lock:
            self._sync(self._clock(), force=False)
            return self._state

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        token = self._before_call()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._after_call(token, exc)
            raise
        self._after_call(token, None)
        return result

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        token = self._before_call()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._after_call(token, exc)
            raise
        self._after_call(token, None)
        return result

    @contextmanager
    def guard(self) -> Iterator[None]:
        token = self._before_call()
        try:
            yield
        except BaseException as exc:
            self._after_call(token, exc)
            raise
        self._after_call(token, None)

    def isolate(self) -> None:
        """Hold the circuit open (everywhere) until ``close()``."""
        with self._lock:
            self._transition(CircuitState.ISOLATED, until=float("inf"), publish=True)

    def close(self) -> None:
        """Close the circuit (everywhere) and reset its statistics; ends an isolate."""
        with self._lock:
            self._shared(lambda store: store.clear(self.name, force=True))
            self._window.reset()
            self._transition(CircuitState.CLOSED, until=0.0, publish=False)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            self._sync(now, force=False)
            throughput, failures = self._window.stats(now)
            return {
                "name": self.name,
                "state": self._state.value,
                "retry_after": max(0.0, self._until - now) if self._until != float("inf") else None,
                "throughput": throughput,
                "failures": failures,
                "shared": self._store is not None and now >= self._redis_down_until,
            }

    # --- internals ----------------------------------------------------------------------------

    def _before_call(self) -> str | None:
        """Admit or reject a call. Returns a probe token when this call is the half-open probe."""
        now = self._clock()
        if self._state is CircuitState.CLOSED and (
            self._store is None or now - self._synced_at < self.options.sync_interval
        ):
            # Fast path without the lock: reading one attribute is atomic, and a call admitted
            # just as another thread opens the circuit is what any breaker allows.
            return None
        with self._lock:
            now = self._clock()
            self._sync(now, force=False)
            if self._state is CircuitState.CLOSED:
                return None
            if self._state is CircuitState.ISOLATED:
                REJECTIONS.labels(self.name).inc()
                raise IsolatedCircuitError(self.name, float("inf"), CircuitState.ISOLATED)
            if self._state is CircuitState.OPEN and now < self._until:
                REJECTIONS.labels(self.name).inc()
                raise BrokenCircuitError(self.name, self._until - now, CircuitState.OPEN)
            if self._probe_token is not None:  # this process already probes
                REJECTIONS.labels(self.name).inc()
                raise BrokenCircuitError(
                    self.name, self.options.sync_interval, CircuitState.HALF_OPEN
                )
            self._probe_seq += 1
            token = f"{id(self)}:{self._probe_seq}:{now}"
            acquired = self._shared(
                lambda store: store.acquire_probe(self.name, token, self.options.probe_lease),
                default=True,
            )
            if not acquired:
                left = self._shared(lambda store: store.probe_lease_left(self.name), default=0.0)
                REJECTIONS.labels(self.name).inc()
                raise BrokenCircuitError(
                    self.name, left or self.options.sync_interval, CircuitState.HALF_OPEN
                )
            self._probe_token = token
            self._transition(CircuitState.HALF_OPEN, until=self._until, publish=False)
            return token

    def _after_call(self, token: str | None, exc: BaseException | None) -> None:
        failure = exc is not None and self.options.is_failure(exc)
        if failure:
            FAILURES.labels(self.name).inc()
        with self._lock:
            now = self._clock()
            if token is not None:
                if token != self._probe_token:
                    return  # a stale probe (closed or isolated meanwhile): its outcome is moot
                self._probe_token = None
                if failure:
                    self._open(now)
                else:
                    self._shared(lambda store: store.clear(self.name, force=False))
                    self._window.reset()
                    self._transition(CircuitState.CLOSED, until=0.0, publish=False)
                return
            if self._state is not CircuitState.CLOSED:
                return  # admitted while closed, finished after the circuit opened
            self._window.record(failure=failure, now=now)
            if not failure:
                return
            throughput, failures = self._window.stats(now)
            if (
                throughput >= self.options.minimum_throughput
                and failures / throughput >= self.options.failure_ratio
            ):
                self._open(now)

    def _open(self, now: float) -> None:
        self._transition(CircuitState.OPEN, until=now + self.options.break_duration, publish=True)

    def _transition(
        self, to_state: CircuitState, *, until: float, publish: bool, adopted: bool = False
    ) -> None:
        from_state = self._state
        now = self._clock()
        throughput, failures = self._window.stats(now)
        self._state = to_state
        self._until = until
        if to_state in (CircuitState.CLOSED, CircuitState.ISOLATED):
            self._probe_token = None
        if publish:
            keep_for = max(self.options.break_duration, 1.0) + 24 * 3600
            shared = SharedState(state=to_state, until=until)
            self._shared(lambda store: store.write(self.name, shared, keep_for))
            self._synced_at = now
        if from_state is to_state:
            return
        log = {
            CircuitState.OPEN: logger.error,
            CircuitState.ISOLATED: logger.error,
            CircuitState.HALF_OPEN: logger.warning,
            CircuitState.CLOSED: logger.info,
        }[to_state]
        log(
            "circuit %s: %s -> %s (failures %d of %d in window)",
            self.name,
            from_state,
            to_state,
            failures,
            throughput,
        )
        circuit_state_changed.send(
            sender=self.name,
            from_state=from_state,
            to_state=to_state,
            failures=failures,
            throughput=throughput,
            adopted=adopted,
        )

    def _sync(self, now: float, *, force: bool) -> None:
        """Adopt the fleet's state, at most every sync_interval."""
        if self._store is None or (
            not force and now - self._synced_at < self.options.sync_interval
        ):
            return
        if now < self._redis_down_until:
            return
        missing = object()
        shared = self._shared(lambda store: store.read(self.name), default=missing)
        if shared is missing:
            return
        self._synced_at = now
        if shared is None:
            if (
                self._state in (CircuitState.OPEN, CircuitState.ISOLATED)
                and self._probe_token is None
            ):
                # Another process's probe succeeded, or an operator closed it.
                self._window.reset()
                self._transition(CircuitState.CLOSED, until=0.0, publish=False, adopted=True)
            return
        if self._probe_token is not None and shared.state is CircuitState.OPEN:
            return  # our own probe is running; its outcome decides
        if shared.state is not self._state or shared.until != self._until:
            if shared.state is CircuitState.ISOLATED:
                self._probe_token = None
            self._transition(shared.state, until=shared.until, publish=False, adopted=True)

    def _shared(self, operation: Callable[[SharedStore], Any], default: Any = None) -> Any:
        if self._store is None:
            return default
        now = self._clock()
        if now < self._redis_down_until:
            return default
        try:
            return operation(self._store)
        except redis.RedisError as exc:
            self._redis_down_until = now + self.options.redis_retry_interval
            logger.warning(
                "circuit %s: shared state unavailable (%s); using local state for %.0f s",
                self.name,
                exc.__class__.__name__,
                self.options.redis_retry_interval,
            )
            return default


@dataclass
class BreakerRegistry:
    """One breaker per name per process, built with settings-driven defaults."""

    store_factory: Callable[[], SharedStore | None]
    options_factory: Callable[[], BreakerOptions]
    clock: Callable[[], float] = time.time
    _breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _store: SharedStore | None = None
    _store_made: bool = False

    def get(self, name: str, options: BreakerOptions | None = None) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                if not self._store_made:
                    self._store = self.store_factory()
                    self._store_made = True
                breaker = CircuitBreaker(
                    name, options or self.options_factory(), store=self._store, clock=self.clock
                )
                self._breakers[name] = breaker
            return breaker

    def all(self) -> list[CircuitBreaker]:
        with self._lock:
            return list(self._breakers.values())

    def forget(self, *, close: bool = False) -> None:
        """Drop every breaker (rebuilt from current settings on next use); ``close`` first closes
        each one, which also clears its shared state."""
        if close:
            for breaker in self.all():
                breaker.close()
        with self._lock:
            self._breakers.clear()
            self._store = None
            self._store_made = False


def breaker_options_from_settings(**overrides: Any) -> BreakerOptions:
    """The seed's breaker defaults from settings, with per-breaker overrides (e.g. is_failure)."""
    from django.conf import settings

    values: dict[str, Any] = {
        "failure_ratio": float(settings.BREAKER_FAILURE_RATIO),
        "sampling_duration": settings.BREAKER_SAMPLING_DURATION.total_seconds(),
        "minimum_throughput": settings.BREAKER_MINIMUM_THROUGHPUT,
        "break_duration": settings.BREAKER_BREAK_DURATION.total_seconds(),
    }
    return BreakerOptions(**(values | overrides))


def _settings_store() -> SharedStore | None:
    from django.conf import settings

    if not settings.REDIS_URL:
        return None
    # Short timeouts and no retries: a slow Redis must not slow the calls the breaker guards.
    return SharedStore(fast_fail_client(settings.REDIS_URL), prefix=settings.BREAKER_KEY_PREFIX)


breakers = BreakerRegistry(
    store_factory=_settings_store, options_factory=breaker_options_from_settings
)


def get_breaker(name: str, options: BreakerOptions | None = None) -> CircuitBreaker:
    return breakers.get(name, options)
