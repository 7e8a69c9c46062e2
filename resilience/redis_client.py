"""Redis clients for fast paths that must never stall the call they serve.

redis-py 8 retries a failed command three times with backoff by default: about 4 s before a
refused connection surfaces. Where Redis is only an accelerator (shared breaker state, locks,
caches) a failure must surface at once so the caller can fall back to local state.

Every client made here is remembered (weakly), so recovery can drop their pooled connections
(``redis_clients_reconnect``) after Redis restarted or failed over.

A refused connection fails at once, but a Redis that hangs (a frozen host, a partition that drops
packets, a server stuck in a long command) answers nothing, and every client waited out its own
socket timeout: a payment create asks Redis six or seven times through four clients (the auth
throttle, the cache, the breakers' shared state, the event queue), and took about 4 s each while
Redis hung. So a Redis server that timed out is *held* in this process: every call to it through
a client made here (``fast_fail_client``, or the cache's pool, ``HeldConnectionPool``) fails at
once with ``RedisHeld`` (a ``redis.ConnectionError``, which every caller already handles as a
refused Redis) until ``REDIS_TIMEOUT_HOLD`` has passed. Then one thread's call goes through as a
probe while the others still fail at once: an answer releases the hold, another timeout renews it.
A hung Redis so costs one call's timeout per hold period and process, not one per call. The hold
is per server address and per process; asyncio clients (the channel layer, the dispatcher's
queue reads) are not held. Health probes ask anyway (``redis_asked_anyway``): they say whether
Redis answers now, and the first answer after a hang releases the hold at once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import redis
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry

from resilience import clock

logger = logging.getLogger(__name__)

_clients: weakref.WeakSet[redis.Redis] = weakref.WeakSet()
_clients_lock = threading.Lock()

# What a hold lasts when settings do not say (settings ``REDIS_TIMEOUT_HOLD``).
DEFAULT_HOLD = timedelta(seconds=2)

REDIS_HOLDS = Counter(
    "cryptopay_redis_holds",
    "Times a Redis server timed out and this process stopped asking it for a while.",
    ["address"],
)


_asking = threading.local()


@contextmanager
def redis_asked_anyway() -> Iterator[None]:
    """This thread's Redis calls in the block are sent even to a held server (health probes):
    a timeout still renews its hold, and an answer releases it."""
    previous = getattr(_asking, "anyway", False)
    _asking.anyway = True
    try:
        yield
    finally:
        _asking.anyway = previous


class RedisHeld(redis.ConnectionError):
    """Not sent: the server timed out moments ago and is held (module docstring)."""


def _hold_duration() -> timedelta:
    from django.conf import settings

    if not settings.configured:  # a client made outside Django (a bench's, a script's)
        return DEFAULT_HOLD
    return getattr(settings, "REDIS_TIMEOUT_HOLD", DEFAULT_HOLD)


class RedisHold:
    """One Redis server as this process last found it: answering, or held after a timeout."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.until: datetime | None = None  # held until then; None: not held
        self._prober: int | None = None  # the thread whose call probes, once the hold is over
        self._probe_until: datetime | None = None
        self._lock = threading.Lock()

    @property
    def probing(self) -> bool:
        """A thread's call is out as the probe of a hold that has passed."""
        return self._prober is not None

    def admit(self) -> None:
        """Return if a call may go to the server now; raise ``RedisHeld`` if not."""
        if self.until is None or getattr(_asking, "anyway", False):
            return
        with self._lock:
            if self.until is None:
                return
            now = clock.now()
            if now < self.until:
                raise RedisHeld(f"Redis at {self.address} timed out; held until {self.until}")
            me = threading.get_ident()
            if self._prober not in (None, me) and self._probe_until and now < self._probe_until:
                raise RedisHeld(f"Redis at {self.address} timed out; another call is probing it")
            # This thread's calls probe; if they neither answer nor time out (an error of
            # another kind), another thread may probe after a hold's length.
            self._prober, self._probe_until = me, now + _hold_duration()

    def timed_out(self) -> None:
        with self._lock:
            newly = self.until is None
            self.until = clock.now() + _hold_duration()
            self._prober = self._probe_until = None
        if newly:
            REDIS_HOLDS.labels(address=self.address).inc()
            logger.warning(
                "Redis at %s timed out: calls to it fail at once until %s, then one probes",
                self.address,
                self.until,
            )

    def answered(self) -> None:
        if self.until is None:
            return
        with self._lock:
            if self.until is None:
                return
            self.until = None
            self._prober = self._probe_until = None
        logger.warning("Redis at %s answers again: no longer held", self.address)


_holds: dict[str, RedisHold] = {}
_holds_lock = threading.Lock()


def redis_hold(address: str) -> RedisHold:
    hold = _holds.get(address)
    if hold is None:
        with _holds_lock:
            hold = _holds.setdefault(address, RedisHold(address))
    return hold


def redis_holds_release() -> None:
    """Forget every hold (recovery, after reconnecting): the next calls go to the servers."""
    for hold in list(_holds.values()):
        hold.answered()


class _HeldConnection:
    """What a redis-py connection class does, through its server's ``RedisHold``. Mixed in
    before the class, so ``super()`` is redis-py's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = getattr(self, "path", "")
        address = path or f"{getattr(self, 'host', '')}:{getattr(self, 'port', '')}"
        self._hold = redis_hold(address)

    def connect(self) -> None:
        self._hold.admit()
        super().connect()  # type: ignore[misc]  # a timeout trips in connect_check_health

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # Reached from connect and from send_packed_command (a connection dropped since its
        # last call).
        try:
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except redis.TimeoutError:
            self._hold.timed_out()
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        hold = self._hold
        hold.admit()
        try:
            super().send_packed_command(command, check_health)  # type: ignore[misc]
        except redis.TimeoutError:
            hold.timed_out()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        hold = self._hold
        try:
            response = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.TimeoutError:
            hold.timed_out()
            raise
        hold.answered()
        return response


class HeldTcpConnection(_HeldConnection, Connection):
    pass


class HeldSslConnection(_HeldConnection, SSLConnection):
    pass


class HeldUnixConnection(_HeldConnection, UnixDomainSocketConnection):
    pass


class HeldConnectionPool(redis.ConnectionPool):
    """redis-py's pool with the held connection class of the URL's scheme (the cache's pool:
    settings ``CACHES``' ``CONNECTION_POOL_CLASS``)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        scheme = urlsplit(url).scheme
        kwargs.setdefault(
            "connection_class",
            {"unix": HeldUnixConnection, "rediss": HeldSslConnection}.get(
                scheme, HeldTcpConnection
            ),
        )
        return super().from_url(url, **kwargs)


def fast_fail_client(url: str, *, timeout: float = 0.25) -> redis.Redis:
    pool = HeldConnectionPool.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as redis.Redis.from_url: the pool is its own
    with _clients_lock:
        _clients.add(client)
    return client


def redis_clients_reconnect() -> int:
    """Close every pooled connection of the clients made here (they reconnect on next use);
    returns how many clients."""
    with _clients_lock:
        clients = list(_clients)
    for client in clients:
        client.connection_pool.disconnect()
    redis_holds_release()
    return len(clients)


def reply_text(raw: bytes | str) -> str:
    """A Redis reply as text: our clients return bytes, though redis-py's types also allow str."""
    return raw.decode() if isinstance(raw, bytes) else raw
