"""Redis clients for fast paths that must never stall the call they serve.

redis-py 8 retries a failed command three times with backoff by default: about 4 s before a
refused connection surfaces. Where Redis is only an accelerator (shared breaker state, locks,
caches) a failure must surface at once so the caller can fall back to local state.

Every client made here is remembered (weakly), so recovery can drop their pooled connections
(``redis_clients_reconnect``) after Redis restarted or failed over.
"""

from __future__ import annotations

import threading
import weakref

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_clients: weakref.WeakSet[redis.Redis] = weakref.WeakSet()
_clients_lock = threading.Lock()


def fast_fail_client(url: str, *, timeout: float = 0.25) -> redis.Redis:
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
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
    return len(clients)


def reply_text(raw: bytes | str) -> str:
    """A Redis reply as text: our clients return bytes, though redis-py's types also allow str."""
    return raw.decode() if isinstance(raw, bytes) else raw
