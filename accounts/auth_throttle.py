"""Failed API key attempts, counted twice: per (client IP, presented key prefix) and per client IP.

* Past API_AUTH_FAILURE_LIMIT failures of one key prefix from one IP, that IP gets 429 with
  Retry-After for that prefix until its window ends, even with the right secret (a 200 would tell
  a guesser it found it). Malformed keys share one pseudo-prefix.
* Past API_AUTH_IP_FAILURE_LIMIT failures of any keys from one IP, its *failed* attempts get 429
  instead of 401 (a signal to back off); a valid key is still served, so one client behind a shared
  address (a proxy, a NAT) cannot lock the others out by sending bad keys.

The client IP is the peer address, or behind CRYPTOPAY_TRUSTED_PROXIES the first address in
X-Forwarded-For, read from the right, that is not one of those proxies.

Counts live in Redis (one fixed window per bucket, shared by every process) and fall back to this
process's memory while Redis is unreachable, so an outage does not open the door.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import threading
from collections.abc import Sequence

import redis
from django.conf import settings
from django.http import HttpRequest

from resilience import clock
from resilience.redis_client import fast_fail_client

logger = logging.getLogger(__name__)

_COUNTED = "_cryptopay_auth_failure_counted"
# The bucket of keys that are not even well-formed (no prefix to tell them apart).
MALFORMED = "-"


def redis_client() -> redis.Redis | None:
    """The throttle's Redis client (fast-failing), or None without REDIS_URL."""
    return _client(settings.REDIS_URL) if settings.REDIS_URL else None


@functools.cache
def _client(url: str) -> redis.Redis:
    return fast_fail_client(url)


_local: dict[tuple[str, int], int] = {}
_local_lock = threading.Lock()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)


def _trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(tuple(settings.TRUSTED_PROXIES)))


def client_ip(request: HttpRequest) -> str:
    """The client's address: the peer, or behind trusted proxies the address the nearest of them
    was connected from. Only hops appended by trusted proxies are believed; whatever a client
    writes into X-Forwarded-For itself sits to the left of them and is never reached."""
    peer = request.META.get("REMOTE_ADDR") or "unknown"
    if not settings.TRUSTED_PROXIES or not _trusted(peer):
        return peer
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for hop in reversed(hops):
        if not hop:
            break
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage in the chain: nothing left of it can be trusted
        if not _trusted(hop):
            return hop
    return peer


def client_ip_address(request: HttpRequest) -> str | None:
    """``client_ip`` for django-axes (AXES_CLIENT_IP_CALLABLE), which wants an address or None
    (a request built by ``Client.force_login`` has no peer)."""
    ip = client_ip(request)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    return ip


def _window() -> tuple[int, float]:
    """The current window's number and the seconds left in it."""
    length = settings.API_AUTH_FAILURE_WINDOW.total_seconds()
    now = clock.now().timestamp()
    number = int(now // length)
    return number, (number + 1) * length - now


def _buckets(ip: str, prefix: str) -> tuple[str, str]:
    """(the key prefix's bucket from this IP, the IP's bucket)."""
    return f"key:{ip}:{prefix or MALFORMED}", f"ip:{ip}"


def _key(bucket: str, window: int) -> str:
    return f"{settings.API_AUTH_THROTTLE_REDIS_PREFIX}:{bucket}:{window}"


def _count(bucket: str, window: int) -> int:
    client = redis_client()
    if client is not None:
        try:
            return int(client.get(_key(bucket, window)) or 0)
        except redis.RedisError:
            pass
    with _local_lock:
        return _local.get((bucket, window), 0)


def _wait(bucket: str, limit: int) -> int | None:
    window, left = _window()
    if _count(bucket, window) < limit:
        return None
    return max(1, math.ceil(left))


def retry_after(request: HttpRequest, prefix: str) -> int | None:
    """Seconds this IP must wait before presenting this key prefix again, or None."""
    return retry_after_reading(request, prefix, ())[0]


def retry_after_reading(
    request: HttpRequest, prefix: str, keys: Sequence[str]
) -> tuple[int | None, list[bytes | str | None] | None]:
    """``retry_after``, with the other Redis ``keys`` read in the same round trip (one MGET):
    (seconds to wait or None, their values, or None when Redis could not be read)."""
    key_bucket, _ = _buckets(client_ip(request), prefix)
    window, left = _window()
    client = redis_client()
    values: list[bytes | str | None] | None = None
    count: int | None = None
    if client is not None:
        try:
            # One MGET: the same single round trip as a pipeline of GETs, without redis-py's
            # pipeline machinery, which cost a cached replay more than the round trip itself.
            first, *values = client.mget([_key(key_bucket, window), *keys])
            count = int(first or 0)
        except redis.RedisError:
            values = None
    if count is None:
        with _local_lock:
            count = _local.get((key_bucket, window), 0)
    wait = None if count < settings.API_AUTH_FAILURE_LIMIT else max(1, math.ceil(left))
    return wait, values


def ip_retry_after(request: HttpRequest) -> int | None:
    """Seconds this IP's failed attempts are answered 429 for, or None."""
    _, ip_bucket = _buckets(client_ip(request), "")
    return _wait(ip_bucket, settings.API_AUTH_IP_FAILURE_LIMIT)


def record_failure(request: HttpRequest, prefix: str) -> None:
    """Count one failed attempt in both buckets (once per request, however often it is
    authenticated)."""
    if getattr(request, _COUNTED, False):
        return
    setattr(request, _COUNTED, True)
    buckets = _buckets(client_ip(request), prefix)
    window, left = _window()
    client = redis_client()
    if client is not None:
        try:
            pipe = client.pipeline()
            for bucket in buckets:
                key = _key(bucket, window)
                pipe.incr(key)
                pipe.expire(key, math.ceil(left) + 1)
            pipe.execute()
            return
        except redis.RedisError:
            logger.warning("auth throttle: Redis unreachable, counting in this process")
    with _local_lock:
        for stale in [k for k in _local if k[1] < window]:
            del _local[stale]
        for bucket in buckets:
            _local[(bucket, window)] = _local.get((bucket, window), 0) + 1
