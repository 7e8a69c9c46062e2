"""Redis clients for fast paths that must never stall the call they serve.

redis-py 8 retries a failed command three times with backoff by default: about 4 s before a
refused connection surfaces. Where Redis is only an accelerator (shared breaker state, locks,
caches) a failure must surface at once so the caller can fall back to local state.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def fast_fail_client(url: str, *, timeout: float = 0.25) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
