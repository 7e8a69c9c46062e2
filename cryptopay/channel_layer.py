"""The Channels layer on Redis, with a ``receive`` that always ends when it is cancelled.

Why not channels-redis's ``RedisChannelLayer`` as it is: on Python 3.11, ``asyncio.wait_for``
returns its inner result instead of raising when a cancellation arrives in the same loop turn
that the inner awaitable finishes (fixed in 3.12), and redis-py sends every command through
``wait_for(writer.drain(), timeout)``. A receive cancelled at that moment (a WebSocket client
leaving, a server shutting down) swallows the cancellation and goes on into the layer's
blocking-pop loop, which only ends when a message for its channel arrives: for a channel whose
consumer has gone, never. The consumer then never finishes (Channels awaits its cancelled
receive), the layer's process-wide receive lock and count stay taken, and an event loop closing
over it waits for ever.

A receive talks to Redis only in ``_brpop_with_clean`` (the pop and its backup-queue upkeep);
everything else it awaits is plain asyncio, which honours a cancellation. So that one step runs
as a task of its own behind ``asyncio.shield``: the receive's cancellation always reaches the
receive, and the step is cancelled again until it has ended (the second cancellation lands on the
blocking pop, which honours it). A message the step had popped stays in the channel's backup
queue, which the next receive of the channel puts back first: nothing is lost. One task per
blocking pop, not per receive: a process pops once per message, however many consumers wait
(a task per receive, tried first, added a few hundred ms to the fan-out bench's p99 rounds).

This overrides a private method of channels-redis 4.3 (pinned in requirements.txt); the test
(tests/cryptopay/test_channel_layer.py) fails if an upgrade changes the path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.core import RedisChannelLayer as ChannelsRedisChannelLayer

# How long each cancellation is given before the next (a pop honours one in a loop turn or two;
# this only bounds the rare swallowed one).
CANCEL_RETRY_SECONDS = 0.05


class RedisChannelLayer(ChannelsRedisChannelLayer):
    async def _brpop_with_clean(self, index: int, channel: str, timeout: float) -> Any:
        popping = asyncio.ensure_future(super()._brpop_with_clean(index, channel, timeout))
        try:
            return await asyncio.shield(popping)
        except asyncio.CancelledError:
            while not popping.done():
                popping.cancel()
                await asyncio.wait([popping], timeout=CANCEL_RETRY_SECONDS)
            if not popping.cancelled():
                # It ended otherwise (popped a message, failed) as we were cancelled: the
                # message waits in the backup queue. Retrieved, so asyncio does not report it.
                popping.exception()
            raise
