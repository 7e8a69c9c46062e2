"""Priority queues shared by every process: three Redis lists of event ids, High, Normal, Low.

Redis only carries ids; the events themselves are in the PostgreSQL outbox, so a lost queue is
rebuilt from it (``events_requeue_lost``). In embedded mode (no REDIS_URL) events are dispatched
in-process right after commit. With Redis configured but down, nothing is dispatched in-process:
``enqueue`` logs and drops the id, the dispatcher's pops fail and it retries every second, and
once Redis is back the requeue sweep queues every event older than NOTIFY_REQUEUE_AFTER that is
still undispatched. Events wait for Redis; none is lost.
"""

from __future__ import annotations

import logging
from functools import cache

import redis
import redis.asyncio
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resilience.redis_client import fast_fail_client, reply_text

logger = logging.getLogger(__name__)

ORDER = ("high", "normal", "low")


@cache
def client() -> redis.Redis | None:
    return fast_fail_client(settings.REDIS_URL, timeout=1.0) if settings.REDIS_URL else None


def key(priority: str) -> str:
    return f"{settings.NOTIFY_REDIS_PREFIX}:queue:{priority}"


def enqueue(*, event_id: int, priority: str) -> None:
    redis_client = client()
    if redis_client is None:
        # Embedded mode: no dispatcher process; fan out right after the commit.
        from notifications.dispatcher import dispatch_events

        dispatch_events(event_ids=[event_id])
        return
    try:
        redis_client.rpush(key(priority), event_id)
    except redis.RedisError as exc:
        # The outbox has it: the requeue sweep queues it once Redis is back.
        logger.warning("event %s not queued (%s); the outbox sweep will queue it", event_id, exc)


def enqueue_many(items: list[tuple[int, str]]) -> None:
    """Queue (event id, priority) pairs in one round trip (the requeue sweep)."""
    redis_client = client()
    if redis_client is None:
        for event_id, priority in items:
            enqueue(event_id=event_id, priority=priority)
        return
    if not items:
        return
    pipe = redis_client.pipeline(transaction=False)
    for event_id, priority in items:
        pipe.rpush(key(priority), event_id)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("%d events not queued (%s); the next sweep queues them", len(items), exc)


def queued_ids() -> set[int]:
    """Every id waiting in the queues (not lost, however old). One read of the lists: the
    requeue sweep runs every NOTIFY_REQUEUE_AFTER, and ids are small."""
    redis_client = client()
    if redis_client is None:
        return set()
    pipe = redis_client.pipeline(transaction=False)
    for priority in ORDER:
        pipe.lrange(key(priority), 0, -1)
    try:
        return {int(raw) for ids in pipe.execute() for raw in ids}
    except redis.RedisError:
        return set()


def sizes() -> dict[str, int]:
    redis_client = client()
    if redis_client is None:
        return dict.fromkeys(ORDER, 0)
    pipe = redis_client.pipeline()
    for priority in ORDER:
        pipe.llen(key(priority))
    return dict(zip(ORDER, pipe.execute(), strict=True))


# Pops up to ARGV[1] ids from KEYS in order (High, Normal, Low) and returns the lengths the
# lists had before, then the ids taken from each: one round trip, and atomic, where the lengths
# and a pop per list took four. LPOP with a count needs Redis 6.2.
_POP_AVAILABLE = """
local size = tonumber(ARGV[1])
local lengths, taken, result = {}, 0, {}
for i, name in ipairs(KEYS) do
  lengths[i] = redis.call('LLEN', name)
  local ids = {}
  if taken < size and lengths[i] > 0 then
    ids = redis.call('LPOP', name, size - taken)
    taken = taken + #ids
  end
  result[i + 1] = ids
end
result[1] = lengths
return result
"""


def _blocking_timeout() -> float:
    """The socket timeout of a client that blocks in BLPOP for up to the longest batching
    interval (5 s): shorter, an idle BLPOP would end in a TimeoutError, not an empty answer."""
    return max(interval for interval, _ in settings.NOTIFY_BATCHING.values()) + 1.0


class Popper:
    """The dispatcher's pops, on its asyncio loop, through a client of its own (a redis.asyncio
    connection belongs to the loop it was opened on). Its socket timeout is long enough for the
    longest blocking pop; a refused connection still fails at once."""

    def __init__(self) -> None:
        self.client = (
            redis.asyncio.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=_blocking_timeout(),
                socket_connect_timeout=1.0,
                retry=Retry(NoBackoff(), 0),
            )
            if settings.REDIS_URL
            else None
        )
        self._script = None if self.client is None else self.client.register_script(_POP_AVAILABLE)

    async def pop_available(self, *, size: int) -> tuple[list[tuple[str, int]], dict[str, int]]:
        """Up to ``size`` ids already queued, High first, then Normal, then Low, without
        waiting; and each queue's length before, for the load (``sizes``). One round trip."""
        if self._script is None:
            return [], dict.fromkeys(ORDER, 0)
        lengths, *taken = await self._script(keys=[key(name) for name in ORDER], args=[size])
        batch = [(name, int(raw)) for name, ids in zip(ORDER, taken, strict=True) for raw in ids]
        return batch, dict(zip(ORDER, (int(length) for length in lengths), strict=True))

    async def pop_batch(
        self, *, size: int, wait: float
    ) -> tuple[list[tuple[str, int]], dict[str, int]]:
        """``pop_available``, blocking up to ``wait`` seconds for the first id; the lengths are
        those the queues had once it came."""
        if self.client is None:
            return [], dict.fromkeys(ORDER, 0)
        first = await self.client.blpop([key(p) for p in ORDER], timeout=max(wait, 0.01))
        if first is None:
            return [], dict.fromkeys(ORDER, 0)
        queue_name, raw = first
        priority = reply_text(queue_name).rsplit(":", 1)[-1]
        more, lengths = await self.pop_available(size=size - 1)  # with none left, the lengths
        return [(priority, int(raw)), *more], lengths

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
