"""The channel layer on the real Redis: a cancelled receive ends, wherever the cancellation lands."""

from __future__ import annotations

import asyncio

from django.conf import settings

from cryptopay.channel_layer import RedisChannelLayer

# A new layer's first receive opens its connection (handshake, then the pop loop's first
# commands): stepping the cancellation through this many loop turns crosses every command's
# send, where Python 3.11's wait_for can swallow it (channels-redis's own layer then kept
# receiving for ever at 14 of these 80 points on this machine).
LOOP_TURNS = 80


def layer() -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[{"address": settings.REDIS_URL, "socket_timeout": 15}])


def test_given_a_receive_cancelled_at_any_point_of_its_first_commands_then_it_ends_at_once():
    async def scenario() -> list[int]:
        still_receiving = []
        for turns in range(LOOP_TURNS):
            fresh = layer()
            channel = await fresh.new_channel()
            receiving = asyncio.ensure_future(fresh.receive(channel))
            for _ in range(turns):
                await asyncio.sleep(0)
            receiving.cancel()
            done, _ = await asyncio.wait([receiving], timeout=1)
            if not done:
                still_receiving.append(turns)
                receiving.cancel()  # the test's own clean-up: this is the failure
                await asyncio.wait([receiving], timeout=10)
            else:
                assert receiving.cancelled()
            await fresh.close_pools()
        return still_receiving

    assert asyncio.run(scenario()) == []


def test_given_a_message_sent_to_a_channel_when_received_then_it_arrives_whole():
    async def scenario() -> dict:
        fresh = layer()
        channel = await fresh.new_channel()
        await fresh.send(channel, {"type": "connection.evict", "n": 7})
        message = await asyncio.wait_for(fresh.receive(channel), timeout=5)
        await fresh.close_pools()
        return message

    assert asyncio.run(scenario()) == {"type": "connection.evict", "n": 7}
