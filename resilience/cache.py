"""A cache hierarchy that keeps answering while its sources and Redis fail.

Levels, each answer labelled with the one it came from and its age:

``live``       computed now by this caller (it won the single-flight refresh).
``cache``      the shared Django cache (Redis via django-redis), no older than ``ttl``; with
               ``local_ttl`` set, a copy this process read from it at most ``local_ttl`` seconds
               ago is served from memory without asking Redis (a hot key then costs one round
               trip per ``local_ttl`` per process, not one per read).
``emergency``  older than ``ttl`` but no older than ``emergency_max_age``: the shared copy kept
               alive by sliding expiration, or this process's own in-memory copy (which also
               survives Redis being down). Entries older than the bound are dropped on cleanup.

Beyond that the caller decides (payments uses its static fallback rates).

Why our own: django-redis and cachetools give one level each; none combines stale-if-error
levels, single-flight refresh across processes and XFetch early refresh.

* Single flight: one refresher per key across processes (a token-checked Redis lock with a short
  lease that the refresher renews while it works, so a refresher killed mid-flight holds the key
  for one short lease, not for its whole budget; it only saves work, it never guards
  correctness) and per process (a thread lock). Callers that lose the race get the previous
  value; with no previous value at all (a cold cache) they wait, up to ``wait_timeout``, for the
  leader's result: a Redis message when it is stored, or the lease lapsing (then one of them
  leads). Without Redis, threads of one process wait on the thread lock.
* Early refresh (XFetch, VLDB 2015): a caller refreshes ahead of expiry with a probability that
  rises as expiry nears, so expiry never makes every caller hit the source at once.
* Sliding expiration: a read re-arms the shared key's lifetime, so a value in use stays
  available as an emergency copy after its freshness is gone.
* Redis errors never reach the caller: they demote the answer to the emergency level.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

import redis
from django.core.cache import caches

logger = logging.getLogger(__name__)

T = TypeVar("T")

LIVE, CACHE, EMERGENCY = "live", "cache", "emergency"


class _Again(enum.Enum):
    AGAIN = enum.auto()  # a waiter's turn to try leading the refresh


_AGAIN: Final = _Again.AGAIN


@dataclass(frozen=True)
class Entry(Generic[T]):
    value: T
    stored_at: float  # epoch seconds the value was computed
    compute_seconds: float  # how long computing it took (XFetch's delta)


@dataclass(frozen=True)
class Answer(Generic[T]):
    value: T
    level: str
    stored_at: float
    age: float


class EmergencyCache(Generic[T]):
    """This process's last good value per key, kept up to ``max_age`` seconds."""

    def __init__(self, *, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age = max_age
        self._clock = clock
        self._entries: dict[str, Entry[T]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, entry: Entry[T]) -> None:
        with self._lock:
            current = self._entries.get(key)
            if current is None or entry.stored_at >= current.stored_at:
                self._entries[key] = entry

    def get(self, key: str) -> Entry[T] | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or self._clock() - entry.stored_at > self.max_age:
            return None
        return entry

    def cleanup(self) -> int:
        """Drop entries past ``max_age``; returns how many."""
        cutoff = self._clock() - self.max_age
        with self._lock:
            stale = [key for key, entry in self._entries.items() if entry.stored_at < cutoff]
            for key in stale:
                del self._entries[key]
        return len(stale)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def clear(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)


class TieredCache(Generic[T]):
    def __init__(
        self,
        *,
        namespace: str,
        ttl: float,
        emergency_max_age: float,
        cache_alias: str = "default",
        lock_lease: float = 3.0,
        wait_timeout: float = 0.0,
        beta: float = 1.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        local_ttl: float = 0.0,
    ) -> None:
        self.namespace = namespace
        self.ttl = ttl
        # A value another process stored (a refresh, an invalidation) is seen here at most this
        # much later; 0 reads the shared level every time.
        self.local_ttl = local_ttl
        self._recent: dict[str, tuple[Entry[T], float]] = {}  # key -> (entry, when read)
        self.lock_lease = lock_lease
        self.wait_timeout = wait_timeout
        self.beta = beta
        self._cache_alias = cache_alias
        self._clock = clock
        self._rand = rand
        self.emergency = EmergencyCache[T](max_age=emergency_max_age, clock=clock)
        self._local_locks: dict[str, threading.Lock] = {}
        self._local_locks_guard = threading.Lock()

    # --- public ---------------------------------------------------------------------------------

    def get(
        self, key: str, compute: Callable[[], T], *, force_refresh: bool = False
    ) -> Answer[T] | None:
        """The best answer available for ``key``, refreshing through ``compute`` when due.

        ``compute`` raises when its source fails; the error is logged and the next level is used.
        Returns None when no level has a value (the caller falls back further).
        """
        now = self._clock()
        recent = None if force_refresh else self._recent.get(key)
        if recent is not None and now - recent[1] < self.local_ttl:
            entry = recent[0]
            if now - entry.stored_at <= self.ttl and not self._refresh_early(entry, now):
                return self._answer(entry, CACHE, now)
        shared = self._read_shared(key)
        if shared is not None:
            self.emergency.put(key, shared)
            if self.local_ttl > 0:
                self._recent[key] = (shared, now)
        if (
            not force_refresh
            and shared is not None
            and now - shared.stored_at <= self.ttl
            and not self._refresh_early(shared, now)
        ):
            return self._answer(shared, CACHE, now)

        # A cold key has nothing to serve a caller who loses the refresh race: it waits instead.
        cold = self.emergency.get(key) is None
        wait = cold and not force_refresh
        # What counts as another caller's refresh on the way: on a cold key anything fresh,
        # else an entry stored since this read began; forced, nothing.
        since = None if force_refresh else -math.inf if wait else now
        refreshed = self._refresh(key, compute, wait=wait, stored_since=since)
        if refreshed is not None:
            return self._answer(refreshed, LIVE, self._clock())
        now = self._clock()
        if shared is not None and now - shared.stored_at <= self.ttl:
            return self._answer(shared, CACHE, now)  # someone else is refreshing: serve previous
        fallback = self.emergency.get(key)
        if fallback is not None:
            return self._answer(fallback, EMERGENCY, now)
        return None

    def peek(self, key: str) -> Answer[T] | None:
        """What a read would serve without refreshing (for status pages)."""
        now = self._clock()
        shared = self._read_shared(key, slide=False)
        if shared is not None and now - shared.stored_at <= self.ttl:
            return self._answer(shared, CACHE, now)
        entry = shared if shared is not None else self.emergency.get(key)
        if entry is not None and now - entry.stored_at <= self.emergency.max_age:
            return self._answer(entry, EMERGENCY, now)
        return None

    def invalidate(self, key: str) -> None:
        """Forget ``key`` at every level (recovery: drop a provider's possibly bad values)."""
        self._recent.pop(key, None)
        self.emergency.clear(key)
        try:
            caches[self._cache_alias].delete(self._key(key))
        except Exception as exc:
            logger.warning("cache %s: delete %s failed: %s", self.namespace, key, exc)

    # --- internals ------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def _answer(self, entry: Entry[T], level: str, now: float) -> Answer[T]:
        return Answer(
            value=entry.value,
            level=level,
            stored_at=entry.stored_at,
            age=max(0.0, now - entry.stored_at),
        )

    def _refresh_early(self, entry: Entry[T], now: float) -> bool:
        expiry = entry.stored_at + self.ttl
        rand = max(self._rand(), 1e-12)
        return now - entry.compute_seconds * self.beta * math.log(rand) >= expiry

    def _read_shared(self, key: str, *, slide: bool = True) -> Entry[T] | None:
        cache = caches[self._cache_alias]
        try:
            backend = getattr(cache, "client", None)
            client = self._redis() if slide else None
            if client is not None and backend is not None and hasattr(backend, "decode"):
                # One round trip for a warm read: read and re-arm the lifetime together (GETEX).
                raw = client.getex(backend.make_key(self._key(key)), ex=self._shared_lifetime())
                entry = None if raw is None else backend.decode(raw)
            else:
                entry = cache.get(self._key(key))
                if entry is not None and slide:
                    cache.touch(self._key(key), self._shared_lifetime())
        except Exception as exc:
            logger.warning("cache %s: read %s failed: %s", self.namespace, key, exc)
            return None
        return entry if isinstance(entry, Entry) else None

    def _shared_lifetime(self) -> int:
        # Kept long enough to serve as an emergency copy; freshness is judged by stored_at.
        return max(1, math.ceil(self.emergency.max_age))

    def _write_shared(self, key: str, entry: Entry[T]) -> None:
        try:
            caches[self._cache_alias].set(self._key(key), entry, self._shared_lifetime())
        except Exception as exc:
            logger.warning("cache %s: write %s failed: %s", self.namespace, key, exc)

    def _local_lock(self, key: str) -> threading.Lock:
        with self._local_locks_guard:
            return self._local_locks.setdefault(key, threading.Lock())

    def _redis(self) -> redis.Redis | None:
        """The shared cache's own Redis client (django-redis), None for other backends."""
        client = getattr(caches[self._cache_alias], "client", None)
        get_client = getattr(client, "get_client", None)
        return get_client(write=True) if get_client is not None else None

    def _fresh(self, key: str) -> Entry[T] | None:
        """A result someone else just stored (shared or, from this process, in memory)."""
        now = self._clock()
        for entry in (self._read_shared(key, slide=False), self.emergency.get(key)):
            if entry is not None and now - entry.stored_at <= self.ttl:
                return entry
        return None

    def _refresh(
        self, key: str, compute: Callable[[], T], *, wait: bool, stored_since: float | None
    ) -> Entry[T] | None:
        """Refresh ``key``, unless a fresh entry stored at ``stored_since`` or later is there by
        the time this caller may: another thread refreshed it on the way. Without that look a
        caller that had found the shared level empty, then the lock free because the leader had
        just finished, computed the same value again. None: refresh whatever is stored."""
        deadline = time.monotonic() + (self.wait_timeout if wait else 0.0)
        local = self._local_lock(key)
        # Threads of this process queue here behind the one that leads (or waits for) the refresh.
        if not local.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return None
        try:
            if stored_since is not None:
                entry = self._fresh(key)
                if entry is not None and entry.stored_at >= stored_since:
                    return entry  # another thread just refreshed it
            return self._refresh_shared(key, compute, deadline=deadline)
        finally:
            local.release()

    def _refresh_shared(
        self, key: str, compute: Callable[[], T], *, deadline: float
    ) -> Entry[T] | None:
        channel = self._key(f"{key}:refreshed")
        try:
            client = self._redis()
        except Exception as exc:
            logger.warning("cache %s: refresh lock unavailable: %s", self.namespace, exc)
            client = None
        if client is None:
            return self._compute(key, compute, lock=None, client=None, channel=channel)
        lock_name = caches[self._cache_alias].make_key(self._key(f"{key}:refreshing"))
        while True:
            # Not thread-local: the renewal thread must see the token the leader holds.
            lock = client.lock(lock_name, timeout=self.lock_lease, thread_local=False)
            try:
                acquired = lock.acquire(blocking=False)
            except redis.RedisError as exc:
                logger.warning("cache %s: refresh lock unavailable: %s", self.namespace, exc)
                return self._compute(key, compute, lock=None, client=None, channel=channel)
            if acquired:
                return self._compute(key, compute, lock=lock, client=client, channel=channel)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None  # another process is refreshing and the caller has a value
            outcome = self._await_leader(client, key, channel, timeout=remaining)
            if outcome is not _AGAIN:
                return outcome

    def _await_leader(
        self, client: redis.Redis, key: str, channel: str, *, timeout: float
    ) -> Entry[T] | Literal[_Again.AGAIN] | None:
        """The leader's entry; None when it failed or Redis did; ``_AGAIN`` when a whole lease
        passed without a word (its process may have died: the caller tries to lead)."""
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(caches[self._cache_alias].make_key(channel))
            # Subscribed before looking: a result stored in between is seen here, not missed.
            entry = self._fresh(key)
            if entry is not None:
                return entry
            # One lease at most: a live leader renews it and answers; a dead one lets it lapse.
            end = time.monotonic() + min(timeout, self.lock_lease)
            message = None
            while message is None and (left := end - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=left)  # the subscribe reply is skipped
        except redis.RedisError as exc:
            logger.warning("cache %s: waiting for the refresh failed: %s", self.namespace, exc)
            return None
        finally:
            try:
                pubsub.close()
            except redis.RedisError:
                pass
        entry = self._fresh(key)
        if entry is not None or message is not None:
            return entry
        return _AGAIN

    def _compute(
        self,
        key: str,
        compute: Callable[[], T],
        *,
        lock: Any,
        client: redis.Redis | None,
        channel: str,
    ) -> Entry[T] | None:
        renewing = _LeaseRenewal(lock, self.lock_lease) if lock is not None else None
        entry: Entry[T] | None = None
        try:
            started = self._clock()
            try:
                value = compute()
            except Exception as exc:
                logger.warning("cache %s: refreshing %s failed: %s", self.namespace, key, exc)
                return None
            finished = self._clock()
            entry = Entry(value=value, stored_at=finished, compute_seconds=finished - started)
            self.emergency.put(key, entry)
            self._write_shared(key, entry)
            if self.local_ttl > 0:
                self._recent[key] = (entry, finished)
            return entry
        finally:
            if renewing is not None:
                renewing.stop()
            if client is not None:
                try:
                    client.publish(
                        caches[self._cache_alias].make_key(channel),
                        "stored" if entry is not None else "failed",
                    )
                    lock.release()
                except (redis.RedisError, redis.exceptions.LockError):
                    pass  # the lease expires on its own


class _LeaseRenewal:
    """Renews a Redis lock's lease every third of it while the holder works."""

    def __init__(self, lock: Any, lease: float) -> None:
        self._lock = lock
        self._lease = lease
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease-renewal")
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._lease / 3):
            try:
                self._lock.reacquire()
            except (redis.RedisError, redis.exceptions.LockError) as exc:
                logger.warning("refresh lease renewal failed: %s", exc)
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self._lease)
