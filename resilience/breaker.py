"""A ratio circuit breaker with Polly v8 semantics whose open state is shared across processes.

Why our own: no Python library has a failure-ratio window with minimum throughput, one half-open
probe across a fleet, a held isolate, or a retry-after (pybreaker counts
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
the state (one key per breaker; a closed circuit keeps a "closed" record, so a missing key means
lost data and never reads as closed: each process then keeps its own state and puts it back) and
one half-open probe permit per break (``SET NX PX`` with a lease, so a hung probe cannot hold the
circuit half-open; taken atomically with a read of the state, and left to expire, never deleted,
so a process that missed the probe's success cannot probe the same break again). Isolates are
also kept in PostgreSQL (``IsolationLedger``), read by each breaker at its first use, so an
operator's decision survives Redis losing its data. A process reads the shared state at
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
from typing import Any, ParamSpec, Protocol, TypeVar

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
    # Epoch seconds the break ends (inf while isolated). For a closed record: the latest break it
    # closed (inf: an operator's close, which ends any break and an isolate).
    until: float


def _encode(shared: SharedState) -> str:
    until = None if shared.until == float("inf") else shared.until
    return json.dumps({"state": shared.state.value, "until": until})


def _decode(raw: bytes | str | None) -> SharedState | None:
    if raw is None:
        return None
    data = json.loads(raw)
    until = float("inf") if data["until"] is None else float(data["until"])
    return SharedState(state=CircuitState(data["state"]), until=until)


class SharedStore:
    """The fleet-wide part of a breaker in Redis: its state key and one probe permit per break.

    A closed circuit is a record too ("closed", with the break it closed), so that a *missing*
    key means lost data (a Redis restart or flush, an expired record), never "closed". A probe
    permit belongs to one break (its key carries the break's end) and is never deleted, only
    left to expire: a process that missed the probe's success cannot take a second permit for
    the same break, and the next break has a permit of its own.
    """

    # KEYS: state, permit; ARGV: the break's end, token, lease ms. Returns {1 = acquired,
    # 0 = taken, -1 = the state is no longer that break (adopt it)} and the state's raw value.
    _ACQUIRE_SCRIPT = """
    local raw = redis.call('GET', KEYS[1])
    if raw then
      local s, u = cjson.decode(raw), tonumber(ARGV[1])
      if s['state'] == 'isolated' then return {-1, raw} end
      if s['state'] == 'open' and s['until'] ~= u then return {-1, raw} end
      -- An older close does not concern this break (opened here while Redis was unreachable).
      if s['state'] == 'closed' and (s['until'] == cjson.null or s['until'] >= u) then
        return {-1, raw}
      end
    end
    if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {1, raw or false} end
    return {0, raw or false}
    """
    # KEYS: state; ARGV: the closed record, the closed break's end, keep ms, force. A probe's
    # success closes only its own break or an older one: never an isolate, never a newer break.
    _CLOSE_SCRIPT = """
    local raw = redis.call('GET', KEYS[1])
    if raw and ARGV[4] == '0' then
      local s = cjson.decode(raw)
      if s['state'] == 'isolated' then return 0 end
      if s['state'] == 'open' and s['until'] > tonumber(ARGV[2]) then return 0 end
    end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
    return 1
    """

    def __init__(self, client: redis.Redis, prefix: str = "cryptopay:breaker") -> None:
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(self._ACQUIRE_SCRIPT)
        self._close = client.register_script(self._CLOSE_SCRIPT)

    def _state_key(self, name: str) -> str:
        return f"{self._prefix}:{name}:state"

    def _permit_key(self, name: str, until: float) -> str:
        return f"{self._prefix}:{name}:probe:{until!r}"

    def read(self, name: str) -> SharedState | None:
        return _decode(self._client.get(self._state_key(name)))

    def write(
        self, name: str, shared: SharedState, keep_for: float, *, only_if_missing=False
    ) -> bool:
        """Publish ``shared``; ``only_if_missing`` restores a lost key without overwriting a
        newer one. Returns whether it was written."""
        px = None if shared.state is CircuitState.ISOLATED else int(keep_for * 1000)
        return bool(
            self._client.set(self._state_key(name), _encode(shared), px=px, nx=only_if_missing)
        )

    def acquire_probe(
        self, name: str, until: float, token: str, lease: float
    ) -> tuple[bool, SharedState | None, bool]:
        """Try to take the probe permit of the break ending at ``until``, atomically with a read
        of the state. Returns (acquired, the state read, whether that is still this break)."""
        code, raw = self._acquire(
            keys=[self._state_key(name), self._permit_key(name, until)],
            args=[repr(until), token, int(lease * 1000)],
        )
        return code == 1, _decode(raw or None), code != -1

    def probe_lease_left(self, name: str, until: float) -> float:
        ttl = self._client.pttl(self._permit_key(name, until))
        return max(0.0, ttl / 1000) if ttl and ttl > 0 else 0.0

    def clear(self, name: str, *, until: float, keep_for: float, force: bool) -> bool:
        """Record the circuit closed after the break ending at ``until`` (everywhere); an isolate
        or a newer break survives unless forced. Returns whether it was recorded."""
        record = _encode(SharedState(CircuitState.CLOSED, until))
        return bool(
            self._close(
                keys=[self._state_key(name)],
                args=[record, repr(until), int(keep_for * 1000), "1" if force else "0"],
            )
        )


class IsolationLedger(Protocol):
    """Where isolates are kept durably (PostgreSQL): an isolate is an operator's decision, and
    Redis may lose it (a restart without persistence, a flush, a failover to an empty replica)."""

    def is_isolated(self, name: str) -> bool: ...

    def record(self, name: str) -> None: ...

    def remove(self, name: str) -> None: ...


class CircuitBreaker:
    """Guard calls to one outside dependency. Thread-safe; one instance per name per process."""

    def __init__(
        self,
        name: str,
        options: BreakerOptions | None = None,
        *,
        store: SharedStore | None = None,
        ledger: IsolationLedger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.options = options or BreakerOptions()
        self._store = store
        self._ledger = ledger
        # The ledger is read once, at first use (then Redis carries the state); until it has been
        # read, calls take the locked path.
        self._ledger_read = ledger is None
        self._ledger_retry_at = float("-inf")
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
        """Hold the circuit open (everywhere, and across Redis data loss) until ``close()``."""
        with self._lock:
            self._ledger_write(lambda ledger: ledger.record(self.name))
            self._transition(CircuitState.ISOLATED, until=float("inf"), publish=True)

    def trip(self) -> None:
        """Open a closed circuit now, for its break duration, without waiting for the window's
        minimum throughput: for a failure that says the next calls will fail too (the host
        does not resolve, nothing listens). An open or isolated circuit is left as it is."""
        with self._lock:
            if self._state is CircuitState.CLOSED:
                self._open(self._clock())

    def close(self) -> None:
        """Close the circuit (everywhere) and reset its statistics; ends an isolate."""
        with self._lock:
            self._ledger_write(lambda ledger: ledger.remove(self.name))
            self._shared(
                lambda store: store.clear(
                    self.name, until=float("inf"), keep_for=self._keep_for, force=True
                )
            )
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
        if (
            self._state is CircuitState.CLOSED
            and self._ledger_read
            and (self._store is None or now - self._synced_at < self.options.sync_interval)
        ):
            # Fast path without the lock: reading one attribute is atomic, and a call admitted
            # just as another thread opens the circuit is what any breaker allows.
            return None
        with self._lock:
            now = self._clock()
            self._sync(now, force=False)
            return self._admit(now, adoptions_left=1)

    def _admit(self, now: float, *, adoptions_left: int) -> str | None:
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
            raise BrokenCircuitError(self.name, self.options.sync_interval, CircuitState.HALF_OPEN)
        self._probe_seq += 1
        token = f"{id(self)}:{self._probe_seq}:{now}"
        until = self._until
        # The permit is taken atomically with a fresh read of the state: a process that has not
        # synced since another one's probe closed (or reopened) the circuit adopts that instead
        # of probing a break that is already over.
        acquired, shared, same_break = self._shared(
            lambda store: store.acquire_probe(self.name, until, token, self.options.probe_lease),
            default=(True, None, True),
        )
        if not same_break:
            self._synced_at = now
            self._adopt(shared)
            if adoptions_left:
                return self._admit(now, adoptions_left=adoptions_left - 1)
            REJECTIONS.labels(self.name).inc()
            raise BrokenCircuitError(self.name, self.options.sync_interval, self._state)
        if not acquired:
            left = self._shared(lambda store: store.probe_lease_left(self.name, until), default=0.0)
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
                    until = self._until
                    self._shared(
                        lambda store: store.clear(
                            self.name, until=until, keep_for=self._keep_for, force=False
                        )
                    )
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
            shared = SharedState(state=to_state, until=until)
            self._shared(lambda store: store.write(self.name, shared, self._keep_for))
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

    @property
    def _keep_for(self) -> float:
        """How long a published open or closed record outlives its break in Redis."""
        return max(self.options.break_duration, 1.0) + 24 * 3600

    def _sync(self, now: float, *, force: bool) -> None:
        """Adopt the fleet's state, at most every sync_interval."""
        if not self._ledger_read and now >= self._ledger_retry_at:
            self._ledger_load(now)
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
        self._adopt(shared)

    def _adopt(self, shared: SharedState | None) -> None:
        """Take over what the shared store says (just read), where it concerns this process."""
        if shared is None:
            # Lost from Redis (restart, flush, expiry), which is not "closed": keep what this
            # process knows (an open circuit stays open until its own break ends) and put it back
            # for the others, unless someone else already did.
            if self._state in (CircuitState.OPEN, CircuitState.ISOLATED):
                restored = SharedState(state=self._state, until=self._until)
                self._shared(
                    lambda store: store.write(
                        self.name, restored, self._keep_for, only_if_missing=True
                    )
                )
            return
        if shared.state is CircuitState.CLOSED:
            # A close reaches the breaks it closed (an operator's: all, isolates too), not a
            # break this process opened since.
            if (
                self._state in (CircuitState.OPEN, CircuitState.ISOLATED)
                and self._probe_token is None
                and self._until <= shared.until
            ):
                self._window.reset()
                self._transition(CircuitState.CLOSED, until=0.0, publish=False, adopted=True)
            return
        if self._probe_token is not None and shared.state is CircuitState.OPEN:
            return  # our own probe is running; its outcome decides
        if shared.state is not self._state or shared.until != self._until:
            if shared.state is CircuitState.ISOLATED:
                self._probe_token = None
            self._transition(shared.state, until=shared.until, publish=False, adopted=True)

    def _ledger_load(self, now: float) -> None:
        assert self._ledger is not None
        ledger = self._ledger
        try:
            isolated = ledger.is_isolated(self.name)
        except Exception as exc:  # the database is down: Redis still carries isolates
            self._ledger_retry_at = now + self.options.redis_retry_interval
            logger.warning("circuit %s: isolation ledger unreadable (%s)", self.name, exc)
            return
        self._ledger_read = True
        if isolated and self._state is not CircuitState.ISOLATED:
            # The ledger is the truth about isolates: put it back in Redis too (it was lost there,
            # or this process would have read it already).
            self._transition(CircuitState.ISOLATED, until=float("inf"), publish=True, adopted=True)

    def _ledger_write(self, operation: Callable[[IsolationLedger], None]) -> None:
        if self._ledger is None:
            return
        try:
            operation(self._ledger)
        except Exception:
            # Redis still carries it to every process; only a later Redis data loss would lose it.
            logger.exception("circuit %s: isolation ledger not updated", self.name)

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
    ledger_factory: Callable[[], IsolationLedger | None] = lambda: None
    clock: Callable[[], float] = time.time
    _breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _store: SharedStore | None = None
    _ledger: IsolationLedger | None = None
    _store_made: bool = False

    def get(self, name: str, options: BreakerOptions | None = None) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                if not self._store_made:
                    self._store = self.store_factory()
                    self._ledger = self.ledger_factory()
                    self._store_made = True
                breaker = CircuitBreaker(
                    name,
                    options or self.options_factory(),
                    store=self._store,
                    ledger=self._ledger,
                    clock=self.clock,
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
            self._ledger = None
            self._store_made = False


def breaker_options_from_settings(**overrides: Any) -> BreakerOptions:
    """The breaker defaults from settings, with per-breaker overrides (e.g. is_failure)."""
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


def _settings_ledger() -> IsolationLedger:
    from resilience.isolation import DatabaseIsolationLedger

    return DatabaseIsolationLedger()


breakers = BreakerRegistry(
    store_factory=_settings_store,
    options_factory=breaker_options_from_settings,
    ledger_factory=_settings_ledger,
)


def get_breaker(name: str, options: BreakerOptions | None = None) -> CircuitBreaker:
    return breakers.get(name, options)
