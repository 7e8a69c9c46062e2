"""Who holds which live WebSocket connection, across every server process: the per-user cap.

Centrifugo's presence model: per user, a Redis sorted set of connections scored
by when they expire, refreshed by each connection's heartbeat and pruned on every read, so a
process that died without saying goodbye stops counting after ``WEBSOCKET_CONNECTION_TTL``. A
second sorted set scores the same connections by when they opened: when a user opens one too
many, the *oldest* is evicted, never the newest, so a user whose old tabs died silently is not
locked out. Registration, pruning and eviction are one Lua script, so two processes accepting the
same user's connections at once cannot both stay under the cap.

Each connection also names its server process, and each process beats a short heartbeat of its
own (``WEBSOCKET_PROCESS_HEARTBEAT``, in a thread, so a busy event loop cannot stall it). A process
killed outright stops beating: within ``WEBSOCKET_PROCESS_TTL`` its connections are dropped before
anything is counted or evicted, so a user whose tabs lived on that process is neither refused nor
has a live connection elsewhere closed with 4509 on their account. The per-connection expiry stays
as the backstop (and covers entries written before connections named their process).

Redis is the shared view; each process also keeps its own connections locally. When Redis cannot
be reached the process enforces the cap over its own connections alone, and its heartbeats put
them back into Redis once it answers again.

Written here rather than taken from a library: Channels has no presence or connection limits, and
the Centrifugo model is thirty lines of Lua on the Redis we already run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

import redis
from django.conf import settings
from prometheus_client import Counter, Gauge

from resilience import clock
from resilience.redis_client import fast_fail_client, reply_text

logger = logging.getLogger(__name__)

# Metric convention (see cryptopay metrics docs): counts are `livesum` gauges, one value per
# process summed at scrape time; events are counters.
CONNECTIONS = Gauge(
    "cryptopay_websocket_connections",
    "Open WebSocket connections in this process",
    ["stream"],
    multiprocess_mode="livesum",
)
EVICTIONS = Counter(
    "cryptopay_websocket_evictions",
    "Connections closed because their user opened more than the cap",
    ["enforced_by"],
)

# Shared by both scripts. KEYS: opened zset, expiry zset, users set, evictions hash, process-of
# hash (connection -> process), processes zset (process -> heartbeat expiry).
_FORGET_DEAD = """
local function forget(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[5], member)
end
local function forget_dead(now)
  local removed = 0
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
    forget(member)
    removed = removed + 1
  end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local process = redis.call('HGET', KEYS[5], member)
    -- No process recorded: an entry from before processes beat; its own expiry governs it.
    if process and not redis.call('ZSCORE', KEYS[6], process) then
      forget(member)
      removed = removed + 1
    end
  end
  return removed
end
"""

_REGISTER = (
    _FORGET_DEAD
    + """
-- ARGV: connection, opened_at, expires_at, now, limit, user, process, process_expires_at
redis.call('ZADD', KEYS[6], ARGV[8], ARGV[7])
forget_dead(ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[7])
redis.call('SADD', KEYS[3], ARGV[6])
local limit = tonumber(ARGV[5])
local evicted = {}
local excess = redis.call('ZCARD', KEYS[1]) - limit
if limit > 0 and excess > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if excess <= 0 then break end
    if member ~= ARGV[1] then
      forget(member)
      table.insert(evicted, member)
      excess = excess - 1
    end
  end
  redis.call('HINCRBY', KEYS[4], ARGV[6], #evicted)
  redis.call('HINCRBY', KEYS[4], '', #evicted)
end
return evicted
"""
)

_PRUNE = (
    _FORGET_DEAD
    + """
-- ARGV: now, user
local removed = forget_dead(ARGV[1])
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return {removed, left}
"""
)


@dataclass(frozen=True)
class ConnectionStats:
    """Connections per user, the total and evictions so far (for the dashboard and metrics)."""

    per_user: dict[str, int]
    total: int
    evictions_total: int
    evictions_per_user: dict[str, int] = field(default_factory=dict)
    source: str = "redis"  # "local" when Redis could not be read


class ConnectionRegistry:
    def __init__(
        self, *, redis_url: str = "", prefix: str | None = None, process_heartbeat: bool = False
    ) -> None:
        """``process_heartbeat``: beat this process's heartbeat from a thread once it registers a
        connection (the server's registry); off, it beats only when called (tests drive it)."""
        self.redis_url = redis_url
        self.prefix = prefix or settings.WEBSOCKET_REDIS_PREFIX
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.process_heartbeat = process_heartbeat
        self._beating: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._scripts: dict[str, object] = {}
        self._local: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    # --- keys -------------------------------------------------------------------------------

    def _keys(self, user: str) -> list[str]:
        return [
            f"{self.prefix}:opened:{user}",
            f"{self.prefix}:expires:{user}",
            f"{self.prefix}:users",
            f"{self.prefix}:evictions",
            f"{self.prefix}:process-of:{user}",
            f"{self.prefix}:processes",
        ]

    def _redis(self) -> redis.Redis | None:
        if not self.redis_url:
            return None
        if self._client is None:
            self._client = fast_fail_client(self.redis_url)
        return self._client

    def _script(self, name: str, source: str):
        client = self._redis()
        if client is None:
            return None
        if name not in self._scripts:
            self._scripts[name] = client.register_script(source)
        return self._scripts[name]

    # --- connections ------------------------------------------------------------------------

    def register(self, *, user: str, connection: str, limit: int | None = None) -> list[str]:
        """Count a new connection; return the connections it evicts (oldest first)."""
        limit = settings.WEBSOCKET_MAX_CONNECTIONS_PER_USER if limit is None else limit
        now = clock.now().timestamp()
        with self._lock:
            self._local.setdefault(user, {})[connection] = now
        script = self._script("register", _REGISTER)
        if script is not None:
            self._start_process_heartbeat()
            try:
                expires = now + settings.WEBSOCKET_CONNECTION_TTL.total_seconds()
                evicted = script(
                    keys=self._keys(user),
                    args=[
                        connection,
                        repr(now),
                        repr(expires),
                        repr(now),
                        limit,
                        user,
                        self.process,
                        repr(self._process_expiry(now)),
                    ],
                )
            except redis.RedisError as exc:
                logger.warning(
                    "connection registry: Redis unavailable (%s); cap enforced locally", exc
                )
            else:
                names = [name.decode() for name in evicted]
                self._forget_local(user, names)
                EVICTIONS.labels(enforced_by="redis").inc(len(names))
                return names
        return self._register_locally(user=user, connection=connection, limit=limit)

    def _register_locally(self, *, user: str, connection: str, limit: int) -> list[str]:
        with self._lock:
            mine = self._local.get(user, {})
            oldest_first = sorted(
                (opened, name) for name, opened in mine.items() if name != connection
            )
            excess = len(mine) - limit if limit > 0 else 0
            evicted = [name for _, name in oldest_first[: max(excess, 0)]]
            for name in evicted:
                mine.pop(name, None)
        EVICTIONS.labels(enforced_by="local").inc(len(evicted))
        return evicted

    def _forget_local(self, user: str, connections: list[str]) -> None:
        with self._lock:
            mine = self._local.get(user, {})
            for name in connections:
                mine.pop(name, None)

    def refresh(self, *, user: str, connection: str) -> bool:
        """Heartbeat: push the connection's expiry forward (and re-add it after a Redis restart).

        Returns False if this connection is no longer counted (it was evicted meanwhile).
        """
        return (user, connection) not in self.refresh_many([(user, connection)])

    def refresh_many(self, connections: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """``refresh`` for many (user, connection) pairs in one Redis round trip (the process's
        heartbeat of all its connections). Returns the pairs no longer counted (evicted)."""
        gone, beating = set(), []
        with self._lock:
            for user, connection in connections:
                opened = self._local.get(user, {}).get(connection)
                if opened is None:
                    gone.add((user, connection))
                else:
                    beating.append((user, connection, opened))
        client = self._redis()
        if client is None or not beating:
            return gone
        now = clock.now().timestamp()
        expires = now + settings.WEBSOCKET_CONNECTION_TTL.total_seconds()
        try:
            # One MULTI, as ``refresh``: a register script never sees a half-refreshed entry.
            pipe = client.pipeline(transaction=True)
            pipe.zadd(f"{self.prefix}:processes", {self.process: self._process_expiry(now)})
            # One command per key with all of a user's connections: a thousand buyers of one
            # payment are three commands, not three thousand built and parsed in this process.
            by_user: dict[str, dict[str, float]] = {}
            for user, connection, opened in beating:
                by_user.setdefault(user, {})[connection] = opened
            for user, mine in by_user.items():
                opened_key, expires_key, _, _, process_of_key, _ = self._keys(user)
                pipe.zadd(opened_key, mine)
                pipe.zadd(expires_key, dict.fromkeys(mine, expires))
                pipe.hset(process_of_key, mapping=dict.fromkeys(mine, self.process))
            pipe.sadd(f"{self.prefix}:users", *by_user)
            pipe.execute()
        except redis.RedisError as exc:
            logger.info("connection registry: heartbeat not recorded (%s)", exc)
        return gone

    def unregister(self, *, user: str, connection: str) -> None:
        with self._lock:
            mine = self._local.get(user, {})
            mine.pop(connection, None)
            if not mine:
                self._local.pop(user, None)
        client = self._redis()
        if client is None:
            return
        opened_key, expires_key, _, _, process_of_key, _ = self._keys(user)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.zrem(opened_key, connection)
            pipe.zrem(expires_key, connection)
            pipe.hdel(process_of_key, connection)
            pipe.execute()
        except redis.RedisError as exc:
            logger.info("connection registry: disconnect not recorded (%s)", exc)

    # --- this process's heartbeat --------------------------------------------------------------

    def _process_expiry(self, now: float) -> float:
        return now + settings.WEBSOCKET_PROCESS_TTL.total_seconds()

    def process_beat(self) -> bool:
        """Tell the other processes this one is alive; False if Redis did not hear it."""
        client = self._redis()
        if client is None:
            return False
        expires = self._process_expiry(clock.now().timestamp())
        try:
            client.zadd(f"{self.prefix}:processes", {self.process: expires})
        except redis.RedisError as exc:
            logger.info("connection registry: process heartbeat not recorded (%s)", exc)
            return False
        return True

    def _start_process_heartbeat(self) -> None:
        if not self.process_heartbeat:
            return
        with self._lock:
            if self._beating is not None:
                return
            self._beating = threading.Thread(
                target=self._beat_forever, name="ws-process-heartbeat", daemon=True
            )
        self._beating.start()

    def _beat_forever(self) -> None:
        interval = settings.WEBSOCKET_PROCESS_HEARTBEAT.total_seconds()
        stopped = threading.Event()  # never set: the thread lives as long as the process
        while not stopped.wait(interval):
            self.process_beat()

    def is_local(self, *, user: str, connection: str) -> bool:
        with self._lock:
            return connection in self._local.get(user, {})

    # --- reads and cleanup ------------------------------------------------------------------

    def _prune(self, client: redis.Redis, user: str) -> tuple[int, int]:
        script = self._script("prune", _PRUNE)
        removed, left = script(keys=self._keys(user), args=[repr(clock.now().timestamp()), user])
        return int(removed), int(left)

    def cleanup(self) -> int:
        """Drop connections whose process (or own heartbeat) stopped; returns how many."""
        client = self._redis()
        if client is None:
            return 0
        removed = 0
        for raw_user in client.smembers(f"{self.prefix}:users"):
            removed += self._prune(client, reply_text(raw_user))[0]
        if removed:
            logger.info("connection registry: removed %d stale connections", removed)
        return removed

    def stats(self) -> ConnectionStats:
        client = self._redis()
        if client is not None:
            try:
                per_user = {}
                for raw_user in sorted(client.smembers(f"{self.prefix}:users")):
                    user = reply_text(raw_user)
                    left = self._prune(client, user)[1]
                    if left:
                        per_user[user] = left
                evictions = {
                    reply_text(key): int(value)
                    for key, value in client.hgetall(f"{self.prefix}:evictions").items()
                }
                total_evictions = evictions.pop("", 0)
                return ConnectionStats(
                    per_user=per_user,
                    total=sum(per_user.values()),
                    evictions_total=total_evictions,
                    evictions_per_user=evictions,
                )
            except redis.RedisError as exc:
                logger.info("connection registry: stats from this process only (%s)", exc)
        with self._lock:
            per_user = {user: len(names) for user, names in self._local.items() if names}
        return ConnectionStats(
            per_user=per_user, total=sum(per_user.values()), evictions_total=0, source="local"
        )


_registry: ConnectionRegistry | None = None
_registry_guard = threading.Lock()


def connection_registry() -> ConnectionRegistry:
    """The process's registry, on the configured Redis (local only in embedded mode)."""
    global _registry
    with _registry_guard:
        if _registry is None:
            _registry = ConnectionRegistry(redis_url=settings.REDIS_URL, process_heartbeat=True)
        return _registry
