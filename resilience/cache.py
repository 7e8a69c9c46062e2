"""A cache hierarchy that keeps answering while its sources and Redis fail.

Levels, each answer labelled with the one it came from and its age:

``live``       computed now by this caller (it won the single-flight refresh).
``cache``      the shared Django cache (Redis via django-redis), no older than ``ttl``.
``emergency``  older than ``ttl`` but no older than ``emergency_max_age``: the shared copy kept
               alive by sliding expiration, or this process's own in-memory copy (which also
               survives Redis being down). Entries older than the bound are dropped on cleanup.

Beyond that the caller decides (payments uses its static fallback rates).

Why our own: django-redis and cachetools give one level each; none combines stale-if-error
levels, single-flight refresh across processes and XFetch early refresh (REFERENCE.md §4).

* Single flight: one refresher per key across processes (a Redis lock, ``cache.add`` with a short
  lease; it only saves work, it never guards correctness) and per process (a thread lock when
  Redis is down). Callers that lose the race get the previous value.
* Early refresh (XFetch, VLDB 2015): a caller refreshes ahead of expiry with a probability that
  rises as expiry nears, so expiry never makes every caller hit the source at once.
* Sliding expiration: a read re-arms the shared key's lifetime, so a value in use stays
  available as an emergency copy after its freshness is gone.
* Redis errors never reach the caller: they demote the answer to the emergency level.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.core.cache import caches

logger = logging.getLogger(__name__)

T = TypeVar("T")

LIVE, CACHE, EMERGENCY = "live", "cache", "emergency"


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
        lock_lease: float = 10.0,
        beta: float = 1.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.namespace = namespace
        self.ttl = ttl
        self.lock_lease = lock_lease
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
        shared = self._read_shared(key)
        if shared is not None:
            self.emergency.put(key, shared)
        if (
            not force_refresh
            and shared is not None
            and now - shared.stored_at <= self.ttl
            and not self._refresh_early(shared, now)
        ):
            return self._answer(shared, CACHE, now)

        refreshed = self._refresh(key, compute)
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

    def _refresh(self, key: str, compute: Callable[[], T]) -> Entry[T] | None:
        local = self._local_lock(key)
        if not local.acquire(blocking=False):
            return None
        try:
            lock_key = self._key(f"{key}:refreshing")
            cache = caches[self._cache_alias]
            try:
                if not cache.add(lock_key, "1", self.lock_lease):
                    return None  # another process is refreshing
                shared_lock = True
            except Exception as exc:
                logger.warning("cache %s: refresh lock unavailable: %s", self.namespace, exc)
                shared_lock = False
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
                return entry
            finally:
                if shared_lock:
                    try:
                        cache.delete(lock_key)
                    except Exception:  # noqa: S110 - the lease expires on its own
                        pass
        finally:
            local.release()
