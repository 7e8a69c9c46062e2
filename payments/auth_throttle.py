"""Failed API key attempts, counted per client IP: past the limit, that IP gets 429 with
Retry-After until its window ends, whatever key it sends (a 200 for the right key would tell a
guesser it found one).

Counts live in Redis (one fixed window per IP, shared by every process) and fall back to this
process's memory while Redis is unreachable, so an outage does not open the door.
"""

from __future__ import annotations

import functools
import logging
import math
import threading

import redis
from django.conf import settings
from django.http import HttpRequest

from resilience import clock
from resilience.redis_client import fast_fail_client

logger = logging.getLogger(__name__)

_COUNTED = "_cryptopay_auth_failure_counted"


def _redis() -> redis.Redis | None:
    return _client(settings.REDIS_URL) if settings.REDIS_URL else None


@functools.cache
def _client(url: str) -> redis.Redis:
    return fast_fail_client(url)


_local: dict[tuple[str, int], int] = {}
_local_lock = threading.Lock()


def client_ip(request: HttpRequest) -> str:
    """The peer address. Behind a proxy, run daphne with --proxy-headers so this is the client."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def _window() -> tuple[int, float]:
    """The current window's number and the seconds left in it."""
    length = settings.API_AUTH_FAILURE_WINDOW.total_seconds()
    now = clock.now().timestamp()
    number = int(now // length)
    return number, (number + 1) * length - now


def _key(ip: str, window: int) -> str:
    return f"{settings.API_AUTH_THROTTLE_REDIS_PREFIX}:{ip}:{window}"


def _count(ip: str, window: int) -> int:
    client = _redis()
    if client is not None:
        try:
            return int(client.get(_key(ip, window)) or 0)
        except redis.RedisError:
            pass
    with _local_lock:
        return _local.get((ip, window), 0)


def retry_after(request: HttpRequest) -> int | None:
    """Seconds this request's IP must wait, or None when it may try a key."""
    window, left = _window()
    if _count(client_ip(request), window) < settings.API_AUTH_FAILURE_LIMIT:
        return None
    return max(1, math.ceil(left))


def record_failure(request: HttpRequest) -> None:
    """Count one failed attempt (once per request, however often it is authenticated)."""
    if getattr(request, _COUNTED, False):
        return
    setattr(request, _COUNTED, True)
    ip = client_ip(request)
    window, left = _window()
    client = _redis()
    if client is not None:
        try:
            key = _key(ip, window)
            pipe = client.pipeline()
            pipe.incr(key)
            pipe.expire(key, math.ceil(left) + 1)
            pipe.execute()
            return
        except redis.RedisError:
            logger.warning("auth throttle: Redis unreachable, counting in this process")
    with _local_lock:
        for stale in [k for k in _local if k[1] < window]:
            del _local[stale]
        _local[(ip, window)] = _local.get((ip, window), 0) + 1
