"""The Channels layer on Redis, with a ``receive`` that always ends when it is cancelled.

Why not channels-redis's ``RedisChannelLayer`` as it is: on Python 3.11, ``asyncio.wait_for``
returns its inner result instead of raising when a cancellation arrives in the same loop turn
that the inner awaitable finishes (fixed in 3.12), and redis-py sends every command through
``wait_for(writer.drain(), timeout)``. A receive cancelled at that moment (a WebSocket client
leaving, a connection's first command, a server shutting down) swallows the cancellation and goes
on into the layer's blocking-pop loop, which only ends when a message for its channel arrives:
for a channel whose consumer has gone, never. The consumer then never finishes (Channels awaits
its cancelled receive), its process-local receive lock stays taken, and an event loop closing
over it waits for ever. Here a cancelled receive is cancelled again until it has ended; the second
cancellation lands on the blocking pop, which honours it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.core import RedisChannelLayer as ChannelsRedisChannelLayer

# How long each cancellation is given before the next (a receive honours one in a loop turn or
# two; this only bounds the rare swallowed one).
CANCEL_RETRY_SECONDS = 0.05


class RedisChannelLayer(ChannelsRedisChannelLayer):
    async def receive(self, channel: str) -> dict[str, Any]:
        receiving = asyncio.ensure_future(super().receive(channel))
        try:
            return await asyncio.shield(receiving)
        except asyncio.CancelledError:
            while not receiving.done():
                receiving.cancel()
                await asyncio.wait([receiving], timeout=CANCEL_RETRY_SECONDS)
            if not receiving.cancelled():
                # It ended otherwise (a message, an error) as we were cancelled: the consumer is
                # going away, as when the cancellation wins. Retrieved, so asyncio does not
                # report it.
                receiving.exception()
            raise
