"""The dependencies every deployment has: the database, Redis (cache, channel layer) and the Celery
broker, with their probes and recovery actions. Registered in ``ResilienceConfig.ready``; the apps
register their own (exchange-rate providers, chain nodes, queues, webhook backlog).

Recovery actions (the specification's: "Database: reconnect, check connection pool; Redis:
reconnect, clear corrupted data"):

* database: close every connection of this process, open a fresh one, run ``SELECT 1`` and read the
  server's connection use (PostgreSQL: backends on this database against ``max_connections``);
* Redis: drop the pooled connections of every client (django-redis and ours), ping, then scan our
  own key prefixes (registered with ``redis_key_prefix_register``) and delete string values that no
  longer decode (e.g. a pickle of a class that a deploy renamed). Other people's keys, and
  non-string keys, are never touched; the scan is bounded by RECOVERY_SCAN_LIMIT keys.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connection, connections
from django_redis.cache import RedisCache

from resilience.degradation import (
    FAILED,
    MITIGATED,
    Dependency,
    Probe,
    RecoveryContext,
    RecoveryResult,
    dependency_source_register,
)
from resilience.redis_client import fast_fail_client, redis_clients_reconnect

STARTED_AT = time.time()
# A PostgreSQL server with more of its connections in use than this is close to refusing more.
POOL_DEGRADED_RATIO = 0.8


# --- database -----------------------------------------------------------------------------------


def database_probe() -> Probe:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    diagnostics: dict[str, Any] = {
        "vendor": connection.vendor,
        "conn_max_age": connection.settings_dict.get("CONN_MAX_AGE"),
    }
    if connection.vendor != "postgresql":
        return Probe.ok(**diagnostics)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity"
        )
        used, limit = cursor.fetchone()
    diagnostics |= {"connections": used, "max_connections": limit}
    if used >= limit * POOL_DEGRADED_RATIO:
        return Probe.degraded(f"{used} of {limit} server connections in use", **diagnostics)
    return Probe.ok(**diagnostics)


def database_recover(context: RecoveryContext) -> RecoveryResult:
    connections.close_all()
    try:
        probe = database_probe()  # opens a fresh connection
    except DatabaseError as exc:
        return RecoveryResult(FAILED, f"reconnect failed: {exc.__class__.__name__}: {exc}"[:500])
    detail = "closed and reopened connections"
    if "connections" in probe.diagnostics:
        detail += (
            f"; pool: {probe.diagnostics['connections']} of "
            f"{probe.diagnostics['max_connections']} server connections in use"
        )
    return RecoveryResult(MITIGATED if probe.status == "ok" else FAILED, detail)


_migrations_checked_at = 0.0
_migrations_lock = threading.Lock()


def migrations_probe() -> Probe:
    """Unapplied migrations mean this code expects tables the database lacks: not ready.
    A positive answer is remembered for a minute (loading the migration graph costs ~0.1 s)."""
    global _migrations_checked_at
    from django.db.migrations.executor import MigrationExecutor

    with _migrations_lock:
        if time.monotonic() - _migrations_checked_at < 60:
            return Probe.ok("all applied (checked in the last minute)")
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        names = [f"{m.app_label}.{m.name}" for m, _ in plan]
        return Probe.unavailable(f"{len(names)} migration(s) not applied", unapplied=names[:20])
    with _migrations_lock:
        _migrations_checked_at = time.monotonic()
    return Probe.ok("all applied")


# --- Redis --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPrefix:
    """Keys of ours under ``pattern`` whose string values must decode with ``decode``."""

    pattern: str
    decode: Callable[[bytes | str], Any]


_prefixes: dict[str, Callable[[], KeyPrefix | None]] = {}


def redis_key_prefix_register(*, key: str, prefix: Callable[[], KeyPrefix | None]) -> None:
    """Register one of our key spaces for the corrupted-key sweep (a factory: settings may
    change)."""
    _prefixes[key] = prefix


def _cache_is_redis() -> bool:
    return isinstance(caches["default"], RedisCache)


def _cache_prefix() -> KeyPrefix | None:
    if not _cache_is_redis():
        return None
    cache = caches["default"]
    assert isinstance(cache, RedisCache)
    return KeyPrefix(pattern=f"{cache.key_prefix}:{cache.version}:*", decode=cache.client.decode)


def _breaker_prefix() -> KeyPrefix | None:
    if not settings.REDIS_URL:
        return None
    return KeyPrefix(pattern=f"{settings.BREAKER_KEY_PREFIX}:*:state", decode=json.loads)


def _idempotency_prefix() -> KeyPrefix | None:
    if not settings.REDIS_URL:
        return None
    return KeyPrefix(pattern=f"{settings.IDEMPOTENCY_REDIS_PREFIX}:response:*", decode=json.loads)


def _client() -> redis.Redis:
    return fast_fail_client(settings.REDIS_URL, timeout=1.0)


def redis_corrupted_keys_remove(*, client: redis.Redis, limit: int) -> tuple[int, int]:
    """Scan our registered prefixes; delete string values that do not decode.
    Returns (keys scanned, keys removed)."""
    scanned = removed = 0
    for factory in list(_prefixes.values()):
        prefix = factory()
        if prefix is None:
            continue
        for key in client.scan_iter(match=prefix.pattern, count=500, _type="string"):
            if scanned >= limit:
                return scanned, removed
            scanned += 1
            raw = client.get(key)
            if raw is None:
                continue
            try:
                prefix.decode(raw)
            except Exception:
                client.delete(key)
                removed += 1
    return scanned, removed


def redis_cache_probe() -> Probe:
    """A write, read and delete through the Django cache: what the application really does."""
    cache = caches["default"]
    key = f"health:{os.getpid()}:{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    cache.set(key, token, 10)
    read = cache.get(key)
    cache.delete(key)
    if read != token:
        return Probe.unavailable("cache did not return what was written")
    return Probe.ok()


def redis_recover(context: RecoveryContext) -> RecoveryResult:
    clients = redis_clients_reconnect()
    if _cache_is_redis():
        cache = caches["default"]
        assert isinstance(cache, RedisCache)
        cache_client = cache.client
        for index in range(len(cache_client._clients)):
            if cache_client._clients[index] is not None:
                cache_client._clients[index].connection_pool.disconnect()
    client = _client()
    try:
        client.ping()
    except redis.RedisError as exc:
        return RecoveryResult(FAILED, f"reconnected {clients} client(s); ping failed: {exc}")
    scanned, removed = redis_corrupted_keys_remove(
        client=client, limit=settings.RECOVERY_SCAN_LIMIT
    )
    return RecoveryResult(
        MITIGATED,
        f"reconnected {clients} client(s) and the cache; {removed} corrupted of {scanned} "
        "scanned key(s) removed",
    )


def channel_layer_probe() -> Probe:
    """The channel layer's Redis hosts answer a PING (its own pools live in event loops)."""
    hosts = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", [])
    for host in hosts:
        address = host["address"] if isinstance(host, dict) else host
        fast_fail_client(address, timeout=1.0).ping()
    return Probe.ok(hosts=len(hosts))


def broker_probe() -> Probe:
    fast_fail_client(settings.CELERY_BROKER_URL, timeout=1.0).ping()
    return Probe.ok()


def _broker_on_redis() -> bool:
    return str(settings.CELERY_BROKER_URL).startswith(("redis://", "rediss://", "unix://"))


def _channels_on_redis() -> bool:
    return "channels_redis" in settings.CHANNEL_LAYERS["default"]["BACKEND"]


def core_dependencies() -> list[Dependency]:
    return [
        Dependency(
            name="database",
            kind="database",
            description="PostgreSQL (SQLite in embedded mode): the source of truth",
            probe=database_probe,
            tags=frozenset({"ready"}),
            recover=database_recover,
            uses_database=True,
        ),
        Dependency(
            name="migrations",
            kind="database",
            description="every migration applied",
            probe=migrations_probe,
            tags=frozenset({"ready"}),
            uses_database=True,
        ),
        Dependency(
            name="redis:cache",
            kind="redis",
            description="Redis as the shared cache (rates, locks)",
            probe=redis_cache_probe,
            tags=frozenset({"ready"}),
            recover=redis_recover,
            configured=_cache_is_redis(),
        ),
        Dependency(
            name="redis:channels",
            kind="redis",
            description="Redis as the Channels layer (browser updates)",
            probe=channel_layer_probe,
            configured=_channels_on_redis(),
        ),
        Dependency(
            name="celery:broker",
            kind="broker",
            description="the Celery broker (background tasks)",
            probe=broker_probe,
            configured=_broker_on_redis(),
        ),
    ]


def register() -> None:
    dependency_source_register(key="resilience.core", source=core_dependencies)
    redis_key_prefix_register(key="cache", prefix=_cache_prefix)
    redis_key_prefix_register(key="breakers", prefix=_breaker_prefix)
    redis_key_prefix_register(key="idempotency", prefix=_idempotency_prefix)


def uptime_seconds() -> float:
    return time.time() - STARTED_AT
