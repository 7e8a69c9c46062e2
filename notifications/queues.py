"""Priority queues shared by every process: three Redis lists of event ids, High, Normal, Low.

Redis only carries ids; the events themselves are in the PostgreSQL outbox, so a lost queue is
rebuilt from it (``events_requeue_lost``). Without Redis (embedded mode, or Redis down) events
are dispatched in-process right after commit instead.
"""

from __future__ import annotations

import logging
from functools import cache

import redis
from django.conf import settings

from resilience.redis_client import fast_fail_client

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


def sizes() -> dict[str, int]:
    redis_client = client()
    if redis_client is None:
        return dict.fromkeys(ORDER, 0)
    pipe = redis_client.pipeline()
    for priority in ORDER:
        pipe.llen(key(priority))
    return dict(zip(ORDER, pipe.execute(), strict=True))


def pop_batch(*, size: int, wait: float) -> list[tuple[str, int]]:
    """Up to ``size`` ids, High first, then Normal, then Low; blocks up to ``wait`` seconds for
    the first one."""
    redis_client = client()
    if redis_client is None:
        return []
    first = redis_client.blpop([key(p) for p in ORDER], timeout=max(wait, 0.01))
    if first is None:
        return []
    queue_name, raw = first
    priority = queue_name.decode().rsplit(":", 1)[-1]
    batch = [(priority, int(raw))]
    for name in ORDER:
        if len(batch) >= size:
            break
        more = redis_client.lpop(key(name), size - len(batch)) or []
        batch.extend((name, int(item)) for item in more)
    return batch
