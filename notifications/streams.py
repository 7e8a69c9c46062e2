"""Live event streams over WebSockets: the consumer base, the per-user cap and missed-message replay.

A stream is a slice of the event outbox: one subject's events (a payment's, positioned by their
per-subject ``sequence``) or one owner's events (a merchant's, positioned by ``stream_position``,
given in dispatch order). Both count 1, 2, 3… without gaps, so a consumer that sees a jump reads
the missing events from the outbox before sending the later one: in order, none twice, none lost.
Apps subclass ``EventStreamConsumer`` and say who may read which stream (``authorize``); this
module does the rest.

A server process joins each Channels group once for all its connections of that stream and
hands each group message to them, encoded once (``notifications.hub``, which says why).

Every heartbeat the process also rejoins its groups and replays from the outbox what came after
each connection's position: a Redis restart empties the groups, and a message the dispatcher
could not hand to the channel layer is then delivered late rather than lost. The heartbeat is
one task per process (per event loop) for all its connections, not one per connection: their
registry entries are refreshed in one Redis round trip, and one query per heartbeat reads the
latest position of every payment stream they follow (one per merchant stream), so only a
connection that is behind reads the outbox, and the connections behind on one stream share one
read. A thousand buyers watching one payment then cost one query a beat instead of two
thousand, which would otherwise queue in the database thread in front of everything else the
process does.

Protocol (JSON text frames):

* server → client
  ``{"type": "subscribed", "stream": …, "position": P}`` once authorized; P is the stream's latest
  position, or the one the client resumed from. Then replayed and live events, each
  ``{"type": "event", "position": P, "event": {…envelope…}}``, in order, without gaps or repeats.
  ``{"type": "refetch", "reason": "gap_too_large" | "history_expired" | "beyond_end",
  "position": P, "url": …}`` when the gap cannot be replayed (or the client resumed from a
  position the stream never reached): read the current state over REST, then carry on from P.
* client → server
  ``{"type": "resume", "after": P}`` (or ``?after=P`` on the URL) replays what came after P, an
  integer from 0 to ``MAX_POSITION``;
  ``{"type": "ping"}`` is answered with ``{"type": "pong"}``.

Close codes, after the handshake is accepted so browsers can read them (as Centrifugo does, which
reserves 4000-4499 for "may reconnect" and 4500-4999 for "do not reconnect"):

=====  ====================  =================================================================
4400   bad_request           a malformed resume position; fix the client and reconnect
4501   unauthenticated       no credentials (checkout token, API key or session); do not retry
4503   forbidden             the credentials do not grant this stream; do not retry
4509   connection_limit      the same user opened more than the cap; this, the oldest, is closed
4013   try_again             the server's channel layer failed; reconnect and resume
=====  ====================  =================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import redis
from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db.models import Max

from cryptopay.correlation import bound_correlation_id, correlation_id_from_scope
from notifications.hub import GroupHub, group_hub, group_hub_forget, hub_of
from notifications.models import Event
from notifications.presence import CONNECTIONS, connection_registry
from resilience import clock

logger = logging.getLogger(__name__)

CLOSE_TRY_AGAIN = 4013  # RFC 6455 1013 "try again later", which autobahn (daphne) will not send
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4501
CLOSE_FORBIDDEN = 4503
CLOSE_CONNECTION_LIMIT = 4509

# The largest resume position accepted: JavaScript's Number.MAX_SAFE_INTEGER, the largest a browser
# holds exactly. Bigger values are not positions, and would overflow the database's integers.
MAX_POSITION = 2**53 - 1


class StreamDenied(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def owner_group(owner: str, *, livemode: bool = True) -> str:
    """The Channels group of an owner's events in one mode (the dispatcher sends to it)."""
    return f"merchant.{owner}" if livemode else f"merchant.{owner}.test"


@dataclass(frozen=True)
class Stream:
    """What a connection reads: its Channels group and its slice of the event outbox."""

    name: str  # shown to the client, e.g. "payment:pay_…"
    group: str  # the Channels group the dispatcher sends to
    owner: str  # events must belong to this owner (a merchant's public id)
    subject: str = ""  # set: one subject's stream, positioned by sequence; empty: by outbox id
    refetch_url: str = ""
    livemode: bool = True  # False: the owner's test-mode events (a stream of their own)

    @property
    def by_sequence(self) -> bool:
        return bool(self.subject)

    def position(self, message: dict[str, Any]) -> int:
        return int(message["event"]["sequence"] if self.by_sequence else message["position"])


@dataclass(frozen=True)
class StreamAccess:
    user: str  # whose connection this is, for the per-user cap ("merchant:…", "user:…", …)
    stream: Stream


@dataclass(frozen=True)
class Replay:
    events: list[tuple[int, dict[str, Any]]]
    latest: int
    refetch: str = ""  # why the gap cannot be replayed, if it cannot


def _events(stream: Stream):
    events = Event.objects.filter(owner=stream.owner, livemode=stream.livemode)
    return events.filter(subject=stream.subject) if stream.by_sequence else events


def _position_field(stream: Stream) -> str:
    return "sequence" if stream.by_sequence else "stream_position"


def stream_latest_position(*, stream: Stream) -> int:
    # Max ignores events not dispatched yet (no position): ordering by the position descending
    # would put their NULLs first on PostgreSQL and answer 0 under any backlog.
    field = _position_field(stream)
    return _events(stream).aggregate(latest=Max(field))["latest"] or 0


def streams_latest_positions(*, streams: set[Stream]) -> dict[Stream, int]:
    """``stream_latest_position`` of many streams: one query for all the payment (subject)
    streams, one per merchant stream (its unique (owner, position) index answers each)."""
    latest: dict[Stream, int] = {}
    by_subject = [stream for stream in streams if stream.by_sequence]
    if by_subject:
        rows = (
            Event.objects.filter(subject__in={stream.subject for stream in by_subject})
            .values("owner", "subject")
            .annotate(latest=Max("sequence"))
        )
        found = {(row["owner"], row["subject"]): row["latest"] for row in rows}
        for stream in by_subject:
            latest[stream] = found.get((stream.owner, stream.subject)) or 0
    for stream in streams:
        if not stream.by_sequence:
            latest[stream] = stream_latest_position(stream=stream)
    return latest


def stream_position_parse(raw: str) -> int | None:
    """A resume position from the URL, or None when it is not one. ASCII digits only: ``isdigit``
    alone accepts superscripts (which ``int`` refuses) and Arabic-Indic digits (which it reads)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_POSITION)):
        return None
    position = int(raw)
    return position if position <= MAX_POSITION else None


def stream_replay(
    *, stream: Stream, after: int, upto: int | None = None, limit: int | None = None
) -> Replay:
    """The events after position ``after`` (up to ``upto``), or why they cannot be replayed."""
    limit = settings.WEBSOCKET_REPLAY_LIMIT if limit is None else limit
    field = _position_field(stream)
    events = _events(stream).filter(**{f"{field}__gt": after})
    if upto is not None:
        events = events.filter(**{f"{field}__lt": upto})
    rows = list(events.order_by(field)[: limit + 1])
    latest = stream_latest_position(stream=stream)
    if after > latest:
        # A position this stream never reached (another database, a client bug): waiting for it
        # would be silence until the stream caught up, so the client starts over from here.
        return Replay(events=[], latest=latest, refetch="beyond_end")
    if len(rows) > limit:
        return Replay(events=[], latest=latest, refetch="gap_too_large")
    window: timedelta = settings.WEBSOCKET_REPLAY_WINDOW
    if rows and rows[0].created_at < clock.now() - window:
        return Replay(events=[], latest=latest, refetch="history_expired")
    return Replay(
        events=[(getattr(row, field), row.envelope()) for row in rows], latest=max(latest, after)
    )


def _query_param(scope: dict[str, Any], name: str) -> str | None:
    # Blank values kept: "?after=" is a malformed position, not an absent one.
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class EventStreamConsumer(AsyncJsonWebsocketConsumer):
    """Base of the live streams; subclasses implement ``authorize`` (runs in a thread)."""

    stream_kind = "stream"
    access: StreamAccess | None = None
    hub: GroupHub | None = None
    hub_reader: asyncio.Task | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Taken by whatever handles a message for this connection (its dispatch, its hub reader).
        self.turn = asyncio.Lock()

    def authorize(self) -> StreamAccess:
        raise NotImplementedError

    async def __call__(self, scope, receive, send):
        # One correlation id (the handshake's X-Request-ID, or a new one) for the connection's
        # log lines and whatever it causes downstream.
        with bound_correlation_id(correlation_id_from_scope(scope)):
            try:
                await super().__call__(scope, receive, send)
            except (redis.RedisError, OSError) as exc:
                # The channel layer (Redis) failed under the connection: close it with "try
                # again later" instead of a crash, before any clean-up that could wait on the
                # same broken layer; the client resumes from its position.
                logger.warning("websocket closed: channel layer unavailable (%s)", exc)
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN,
                                "reason": "try_again: live events briefly unavailable"})  # fmt: skip
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.disconnect(CLOSE_TRY_AGAIN), timeout=5)
            finally:
                # However it ended (a handler raised, the server cancelled it), the connection
                # leaves its group's room and the cap: nothing is queued for it any more.
                if self.access is not None:
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(self.disconnect(CLOSE_TRY_AGAIN), timeout=5)

    def hub_deliver(self, message: dict[str, Any], frame: Callable[[int], str]) -> None:
        """A group message from the hub, queued for this connection's reader of the hub
        (``_read_hub``). A live event comes with the hub's frame; any other message type is
        dispatched as a group message would be."""
        if message.get("type") == "event.message":
            self.inbox.put_nowait({"type": "event.frame", "message": message, "frame": frame})
        else:
            self.inbox.put_nowait(message)

    async def _read_hub(self) -> None:
        """Hands what the hub queued to the handlers, one at a time and never while ``dispatch``
        runs one (``turn``), so a connection's frames go out in the order it decided them. One
        task per connection waiting on its queue costs a wake-up per event, where a third
        source in Channels' dispatch loop cost a new task and an ``asyncio.wait`` each time."""
        while True:
            message = await self.inbox.get()
            try:
                async with self.turn:
                    await self._handle(message)
            except Exception:
                # As when a Channels handler raises, the connection ends; the client resumes.
                logger.exception("websocket %s: a live event failed", self.stream_kind)
                with contextlib.suppress(Exception):
                    await self.close(code=CLOSE_TRY_AGAIN, reason="try_again: live events failed")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.disconnect(CLOSE_TRY_AGAIN), timeout=5)
                return

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its ``aclose_old_connections``: that is a hop to the one
        sync thread for every message, so one group message fanned out to a thousand connections
        of a process queued a thousand hops behind each other. Every database read here goes
        through ``database_sync_to_async``, which closes stale connections around itself.
        Handled in turn with the hub's messages (``_read_hub``)."""
        async with self.turn:
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # helpers for subclasses
    def query_param(self, name: str) -> str | None:
        return _query_param(self.scope, name)

    def header(self, name: bytes) -> str | None:
        return _header(self.scope, name)

    # --- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.accept()
        raw_after = self.query_param("after")
        after = None if raw_after is None else stream_position_parse(raw_after)
        if raw_after is not None and after is None:
            # Refused before it is counted against the user's cap: nothing to release.
            await self.close(
                code=CLOSE_BAD_REQUEST,
                reason=f"bad_request: after must be a stream position from 0 to {MAX_POSITION}",
            )
            return
        try:
            access = await database_sync_to_async(self.authorize)()
        except StreamDenied as denied:
            logger.info("websocket %s refused: %s", self.stream_kind, denied.reason)
            await self.close(code=denied.code, reason=denied.reason)
            return
        self.access = access
        self.position: int | None = None
        registry = connection_registry()
        evicted = await sync_to_async(registry.register, thread_sensitive=False)(
            user=access.user, connection=self.channel_name
        )
        CONNECTIONS.labels(stream=self.stream_kind).inc()
        self.loop = asyncio.get_running_loop()
        _live[self.channel_name] = self
        try:
            for name in evicted:
                await self._evict(name)
            self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self.hub_reader = asyncio.ensure_future(self._read_hub())
            self.hub = group_hub(self.channel_layer)
            await self.hub.join(access.stream.group, self)
            _heartbeat_ensure(self.loop)
            await self._subscribe(after=after)
        except BaseException:
            # A consumer that fails here never gets websocket.disconnect: give its slot back
            # (and stop its heartbeat, which would keep counting it) before the crash goes on.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.disconnect(CLOSE_TRY_AGAIN), timeout=5)
            raise

    async def disconnect(self, code: int) -> None:
        if self.access is None:
            return
        if _live.pop(self.channel_name, None) is not None:
            CONNECTIONS.labels(stream=self.stream_kind).dec()
        await sync_to_async(connection_registry().unregister, thread_sensitive=False)(
            user=self.access.user, connection=self.channel_name
        )
        if self.hub_reader is not None and self.hub_reader is not asyncio.current_task():
            self.hub_reader.cancel()
        self.hub_reader = None
        if self.hub is not None:
            await self.hub.leave(self.access.stream.group, self, timeout=2)
        self.access = None

    async def _catch_up(self) -> None:
        """Send what the outbox has after our position (dispatched while we missed it)."""
        if self.access is None or self.position is None:
            return
        replay = await database_sync_to_async(stream_replay)(
            stream=self.access.stream, after=self.position
        )
        if replay.refetch:
            await self._refetch(replay)
            return
        for position, envelope in replay.events:
            await self._send_event(position, envelope)

    async def _evict(self, name: str) -> None:
        local = _live.get(name)
        if local is not None:
            await local.connection_evict({"type": "connection.evict"})
            return
        try:
            await self.channel_layer.send(name, {"type": "connection.evict"})
        except Exception as exc:
            logger.info("websocket eviction of %s not delivered: %s", name, exc)

    async def connection_evict(self, message: dict[str, Any]) -> None:
        if self.access is None:
            return
        logger.info("websocket of %s evicted: connection limit", self.access.user)
        await self.close(
            code=CLOSE_CONNECTION_LIMIT,
            reason=f"connection_limit: more than {settings.WEBSOCKET_MAX_CONNECTIONS_PER_USER} "
            "connections for this user; this, the oldest, is closed",
        )
        await self.disconnect(CLOSE_CONNECTION_LIMIT)

    # --- replay and live events ---------------------------------------------------------------

    async def _subscribe(self, *, after: int | None) -> None:
        assert self.access is not None
        stream = self.access.stream
        if after is None:
            self.position = await database_sync_to_async(stream_latest_position)(stream=stream)
            await self.send_json(
                {"type": "subscribed", "stream": stream.name, "position": self.position}
            )
            return
        replay = await database_sync_to_async(stream_replay)(stream=stream, after=after)
        if replay.refetch:
            self.position = replay.latest
            await self.send_json({"type": "subscribed", "stream": stream.name, "position": after})
            await self.send_json(
                {
                    "type": "refetch",
                    "reason": replay.refetch,
                    "position": replay.latest,
                    "url": stream.refetch_url,
                }
            )
            return
        self.position = after
        await self.send_json({"type": "subscribed", "stream": stream.name, "position": after})
        for position, envelope in replay.events:
            await self._send_event(position, envelope)

    async def _send_event(self, position: int, envelope: dict[str, Any]) -> None:
        if self.position is not None and position <= self.position:
            return
        self.position = position
        await self.send_json({"type": "event", "position": position, "event": envelope})

    async def event_frame(self, item: dict[str, Any]) -> None:
        """A live event from the hub: the next position is sent as the frame the hub encoded
        once for the whole group; anything else (a gap, a repeat) goes the way of any event."""
        message = item["message"]
        if self.access is None:
            return
        position = self.access.stream.position(message)
        if self.position is not None and position == self.position + 1:
            self.position = position
            await self.send(text_data=item["frame"](position))
            return
        await self.event_message(message)

    async def event_message(self, message: dict[str, Any]) -> None:
        """A live event from the dispatcher (group message type ``event.message``)."""
        if self.access is None:
            return
        stream = self.access.stream
        position = stream.position(message)
        if self.position is not None and position > self.position + 1:
            # An earlier message was lost (the channel layer failed) or a later event overtook
            # it: every earlier position is committed already, so fill the gap from the outbox.
            replay = await database_sync_to_async(stream_replay)(
                stream=stream, after=self.position, upto=position
            )
            if replay.refetch:
                await self._refetch(replay)
            for earlier, envelope in replay.events:
                await self._send_event(earlier, envelope)
        await self._send_event(position, message["event"])

    async def _refetch(self, replay: Replay) -> None:
        """Too much to replay: the client reads the state over REST and carries on from here."""
        assert self.access is not None
        await self.send_json(
            {"type": "refetch", "reason": replay.refetch, "position": replay.latest,
             "url": self.access.stream.refetch_url}
        )  # fmt: skip
        self.position = replay.latest

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self.access is None:
            return
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "ping":
            await self.send_json({"type": "pong"})
        elif kind == "resume":
            after = content.get("after")
            if (
                not isinstance(after, int)
                or isinstance(after, bool)
                or not 0 <= after <= MAX_POSITION
            ):
                await self.send_json(
                    {"type": "error", "code": "bad_request",
                     "message": f"after must be a stream position from 0 to {MAX_POSITION}"}
                )  # fmt: skip
                return
            self.position = after
            await self._subscribe(after=after)
        else:
            await self.send_json(
                {"type": "error", "code": "unknown_message", "message": "expected ping or resume"}
            )

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        try:
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)
        except ValueError:
            await self.send_json({"type": "error", "code": "bad_json", "message": "send JSON text"})


# The consumers of this process by channel name: an eviction of one of them needs no channel layer
# (which is Redis, and may be what is down).
_live: dict[str, EventStreamConsumer] = {}

# The heartbeat task of each event loop that has connections (a server has one loop).
_beats: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def _heartbeat_ensure(loop: asyncio.AbstractEventLoop) -> None:
    task = _beats.get(loop)
    if task is None or task.done():
        _beats[loop] = loop.create_task(_heartbeat(loop))


def _beating(loop: asyncio.AbstractEventLoop) -> list[EventStreamConsumer]:
    return [c for c in _live.values() if c.access is not None and c.loop is loop]


async def _heartbeat(loop: asyncio.AbstractEventLoop) -> None:
    """Every WEBSOCKET_HEARTBEAT, for every connection of ``loop``: refresh its registry entry,
    rejoin its group (once for all the connections of a group), and catch it up from the outbox
    if its stream moved past it. Ends when the loop has no connection left (the next connect
    starts it again)."""
    registry = connection_registry()
    interval = settings.WEBSOCKET_HEARTBEAT.total_seconds()
    while True:
        await asyncio.sleep(interval)
        consumers = _beating(loop)
        if not consumers:
            if not any(c.loop is loop for c in _live.values()):
                _beats.pop(loop, None)  # no await since the check: a connect starts a new one
                group_hub_forget(loop)
                return
            continue
        try:
            await sync_to_async(registry.refresh_many, thread_sensitive=False)(
                [(c.access.user, c.channel_name) for c in consumers if c.access is not None]
            )
            hub = hub_of(loop)
            if hub is not None:
                await hub.rejoin(timeout=interval)
        except Exception:  # whatever it was, the beat goes on for every connection
            logger.exception("websocket heartbeat failed; next beat in %s s", interval)
        try:
            await _catch_up_behind(consumers)
        except Exception as exc:  # the database is down: next beat
            logger.info("websocket catch-up skipped: %s", exc)


async def _catch_up_behind(consumers: list[EventStreamConsumer]) -> None:
    """Send each connection what its stream has after its position: one query for where every
    stream is, then one outbox read per stream for the connections behind on it (each skips what
    it already has); a stream whose shared read cannot be replayed as a whole (too long, expired)
    is read per connection, which refetches where its own gap requires it."""
    followed = {c.access.stream: c for c in consumers if c.access is not None}
    latest = await database_sync_to_async(streams_latest_positions)(streams=set(followed))
    behind: dict[Stream, list[EventStreamConsumer]] = {}
    for c in consumers:
        if c.access is not None and c.position is not None:
            if c.position < latest.get(c.access.stream, 0):
                behind.setdefault(c.access.stream, []).append(c)
    for stream, group in behind.items():
        after = min(c.position or 0 for c in group)
        replay = await database_sync_to_async(stream_replay)(stream=stream, after=after)
        for c in group:
            async with c.turn:  # not between two frames its hub reader is sending
                if replay.refetch:
                    await c._catch_up()
                    continue
                for position, envelope in replay.events:
                    if c.access is not None:
                        await c._send_event(position, envelope)
