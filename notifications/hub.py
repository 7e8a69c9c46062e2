"""One Channels group membership per server process for the live streams: ``GroupHub``.

Why our own hub rather than each consumer joining its group: channels-redis already puts a group
message on Redis once per process (one entry naming every channel of that process in the group),
but then hands it to every consumer through the layer's receive: each consumer's pending
``channel_layer.receive`` wakes, takes the message from its own buffer and starts waiting again
(two new tasks and a lock race per consumer per message), and each consumer encodes the same JSON
frame. With a thousand buyers on one payment that was most of the ~0.4 ms of server CPU per
socket per event. Here a process joins each group once, with a channel of its own (a "room")
read by one task; a message is encoded once and put on the queue of each local consumer of that
group, which one task per consumer reads in turn with its Channels dispatch, so what is left per
socket is that wake-up and the socket write.

Why not channels-redis's ``RedisPubSubChannelLayer``, which also receives a group message once
per process: it subscribes every consumer's channel in Redis (a thousand SUBSCRIBEs for a thousand
sockets), decodes the message once per consumer, loses what is published while a process is
between connections (the list-based layer keeps it for ``expiry``), and keeps group membership in
the process only, where the dispatcher's skipping of groups without members reads the Redis group
keys. The rest stays as Channels has it: the dispatcher's ``group_send``, each consumer's own
channel (evictions are sent to it), ``group_add``/``group_discard`` with the layer's expiry. A
Redis restart empties the groups: the streams' heartbeat calls ``rejoin`` and catches the
connections up from the outbox, as it did for each consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# How long a room's reader waits after the channel layer failed (Redis down) before reading again;
# what it misses meanwhile the heartbeat replays from the outbox.
RECEIVE_RETRY_SECONDS = 1.0


class Member(Protocol):
    """A consumer of a room: takes a message and its encoded frame without waiting."""

    def hub_deliver(self, message: dict[str, Any], frame: Callable[[int], str]) -> None: ...


@dataclass(eq=False)
class Room:
    """This process's membership of one group: its channel, its reader, its local consumers."""

    group: str
    members: set[Member] = field(default_factory=set)
    channel: str = ""
    opened: asyncio.Future | None = None  # group_add done (or failed)
    reader: asyncio.Task | None = None


def event_frame(position: int, envelope: dict[str, Any]) -> str:
    """The text frame of a live event (the streams' protocol)."""
    return json.dumps({"type": "event", "position": position, "event": envelope})


class GroupHub:
    """The rooms of one event loop (a server process has one) on one channel layer."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.rooms: dict[str, Room] = {}

    async def join(self, group: str, member: Member) -> None:
        """Deliver ``group``'s messages to ``member`` from now on: when this returns the process
        is in the group (raises what the channel layer raised if it could not join)."""
        room = self.rooms.get(group)
        opening = room is None
        if room is None:
            room = self.rooms[group] = Room(group=group)
            room.opened = asyncio.ensure_future(self._open(room))
        room.members.add(member)
        try:
            await asyncio.shield(room.opened)  # type: ignore[arg-type]
            if not opening:
                # Every connect asserts the membership again, as a consumer's own group_add did:
                # one that joins after a Redis restart is live at once, not from the next beat.
                await self.layer.group_add(group, room.channel)
        except BaseException:
            await self._depart(room, member, timeout=2)
            raise

    async def _open(self, room: Room) -> None:
        try:
            room.channel = await self.layer.new_channel()
            await self.layer.group_add(room.group, room.channel)
        except BaseException:
            # The next join tries again with a room of its own.
            if self.rooms.get(room.group) is room:
                del self.rooms[room.group]
            raise
        if self.rooms.get(room.group) is not room:
            # Every member left while it was joining: leave again rather than read for no one.
            with contextlib.suppress(Exception):
                await self.layer.group_discard(room.group, room.channel)
            return
        room.reader = asyncio.ensure_future(self._read(room))

    async def leave(self, group: str, member: Member, *, timeout: float = 2) -> None:
        """Stop delivering to ``member``; the last member out takes the process out of the group.
        A join racing this one opens a new room (a new channel), so the two never undo each
        other's membership."""
        room = self.rooms.get(group)
        if room is not None:
            await self._depart(room, member, timeout=timeout)

    async def _depart(self, room: Room, member: Member, *, timeout: float) -> None:
        room.members.discard(member)
        if room.members or self.rooms.get(room.group) is not room:
            return
        del self.rooms[room.group]
        group = room.group
        if room.reader is not None:
            room.reader.cancel()
        opened = room.opened
        if (
            opened is not None
            and opened.done()
            and not opened.cancelled()
            and not opened.exception()
        ):
            try:
                await asyncio.wait_for(self.layer.group_discard(group, room.channel), timeout)
            except Exception as exc:  # the group's expiry removes the channel in the end
                logger.info("websocket hub: group_discard of %s failed: %s", group, exc)

    async def rejoin(self, *, timeout: float, concurrency: int = 20) -> None:
        """Join every room's group again (a Redis restart emptied the groups); each bounded by
        ``timeout``, since a channel-layer connection can hang on a lost reply."""
        gate = asyncio.Semaphore(concurrency)

        async def again(room: Room) -> None:
            async with gate:
                if room.channel and room.reader is not None and not room.reader.done():
                    try:
                        await asyncio.wait_for(
                            self.layer.group_add(room.group, room.channel), timeout
                        )
                    except Exception as exc:  # Redis is down: the outbox still works
                        logger.info("websocket group rejoin of %s failed: %s", room.group, exc)

        await asyncio.gather(*(again(room) for room in list(self.rooms.values())))

    async def _read(self, room: Room) -> None:
        while True:
            try:
                message = await self.layer.receive(room.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.info("websocket hub: reading %s failed (%s); retrying", room.group, exc)
                await asyncio.sleep(RECEIVE_RETRY_SECONDS)
                continue
            self.deliver(room, message)

    @staticmethod
    def deliver(room: Room, message: dict[str, Any]) -> None:
        """Hand ``message`` to every member; the frame of a position is encoded once, by the
        first member that sends it. A member that fails is logged and the others still get it."""
        frames: dict[int, str] = {}
        envelope = message.get("event")

        def frame(position: int) -> str:
            text = frames.get(position)
            if text is None:
                text = frames[position] = event_frame(position, envelope or {})
            return text

        for member in list(room.members):
            try:
                member.hub_deliver(message, frame)
            except Exception:
                logger.exception("websocket hub: a consumer of %s refused a message", room.group)


# The hub of each event loop that has stream connections (a server has one loop; tests one each).
_hubs: dict[asyncio.AbstractEventLoop, GroupHub] = {}


def group_hub(layer: Any) -> GroupHub:
    """The running loop's hub on ``layer`` (the consumers' channel layer)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = GroupHub(layer)
    return hub


def group_hub_forget(loop: asyncio.AbstractEventLoop) -> None:
    """Drop a loop's hub once it has no room left (its loop may be closing)."""
    hub = _hubs.get(loop)
    if hub is not None and not hub.rooms:
        with contextlib.suppress(KeyError):
            del _hubs[loop]


def hub_of(loop: asyncio.AbstractEventLoop) -> GroupHub | None:
    """The hub of ``loop``, if it has one (the heartbeat rejoins its rooms)."""
    return _hubs.get(loop)
