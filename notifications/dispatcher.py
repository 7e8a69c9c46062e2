"""The dispatcher: drains the priority queues and fans events out to browsers and webhooks.

Adaptive batching (NOTIFY_BATCHING, the specification's default): the load is the mean number of queued events over the last
NOTIFY_LOAD_WINDOW samples; at or above NOTIFY_HIGH_LOAD_THRESHOLD it takes batches of 200 and
waits at most 100 ms for work, below NOTIFY_LOW_LOAD_THRESHOLD batches of 10 and up to 5 s, in
between 50 and 1 s. Waiting is a blocking pop, so a new event (High first) wakes it at once: the
interval bounds idle polling, it never delays an event that is already there.

Per batch the database work is done in bulk (stream positions, deliveries created and claimed,
events marked dispatched, in one transaction of two round trips). The dispatcher process does
everything on one long-lived asyncio loop (``DeliveryLoop``): the pops, the batch's transaction
on an asyncio connection, browser groups through one channel-layer connection pool, webhooks
through ``sender.Sender`` (pooled keep-alive connections, a lane of at most 4 requests per
endpoint, 32 while it answers fast, High first); outcomes are recorded in bulk by a recorder
thread. ``dispatch_events`` does the same work synchronously (embedded mode, one-off calls).

Several dispatchers may run: Redis hands each id to one of them, and everything done per event is
idempotent (deliveries are unique per endpoint and event and claimed once per attempt; browsers
and webhook receivers deduplicate by event id), so at-least-once never becomes twice-processed
state. An id lost with a dying dispatcher is queued again from the outbox
(``events_requeue_lost``); deliveries it had claimed are retried once their claim's lease ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import stamina
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Model
from prometheus_client import Counter, Gauge

from cryptopay import bulk_writes
from notifications import delivery, queues
from notifications.models import PRIORITY_RANK, Event, EventStream, WebhookEndpoint
from notifications.sender import Claim, Outcome, Sender, new_event_loop
from notifications.streams import owner_group
from resilience import clock
from resilience.postgresql import asynchronous

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)
T = TypeVar("T")

DISPATCHED = Counter("cryptopay_notifications_dispatched", "Events dispatched", ["priority"])
# mostrecent: the dispatcher sets it on every batch and /metrics on every scrape
# (notifications.metrics); the last reading of the shared Redis queues is the true one.
QUEUE_SIZE = Gauge(
    "cryptopay_notifications_queue_size", "Queued events", ["priority"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
BATCH_SIZE = Gauge(
    "cryptopay_notifications_batch_size", "Batch size in force", multiprocess_mode="max"
)
BATCH_INTERVAL = Gauge(
    "cryptopay_notifications_batch_interval_seconds", "Batch interval in force",
    multiprocess_mode="max",
)  # fmt: skip


@dataclass(frozen=True)
class Batching:
    level: str
    interval: float
    size: int


class AdaptiveBatching:
    """Chooses batch size and interval from the load over a rolling window of samples."""

    def __init__(self, *, window: int | None = None) -> None:
        self.samples: deque[int] = deque(maxlen=window or settings.NOTIFY_LOAD_WINDOW)

    def observe(self, queued: int) -> Batching:
        self.samples.append(queued)
        return self.current()

    def current(self) -> Batching:
        load = sum(self.samples) / len(self.samples) if self.samples else 0
        if load >= settings.NOTIFY_HIGH_LOAD_THRESHOLD:
            level = "high"
        elif load < settings.NOTIFY_LOW_LOAD_THRESHOLD:
            level = "low"
        else:
            level = "normal"
        interval, size = settings.NOTIFY_BATCHING[level]
        return Batching(level=level, interval=interval, size=size)


def _positions_write(events: list[Event], *, dispatched_at: datetime | None = None) -> None:
    """Give each event its place in its owner's live stream: 1, 2, 3… in dispatch order (the
    list's order), without gaps. Inside the caller's transaction, with the events locked. With
    ``dispatched_at``, every event is marked dispatched in the same statement.

    Dispatch order, not creation order: a High event overtakes a Normal one, a lost queue is
    rebuilt from the outbox, and a client must still get each of them once. Without gaps, so a
    consumer that sees position P+2 after P knows P+1 is missing and reads it from the outbox
    (it is committed: the owner's row lock orders the positions). Given once; a re-dispatch
    keeps it. System events (no owner) are in no merchant stream. Test-mode events have a stream
    of their own per owner (``EventStream.livemode``), numbered apart from the live one.
    """
    by_owner = _needing_positions(events)
    if not by_owner:
        if dispatched_at is not None:
            _events_write(events, dispatched_at=dispatched_at)
        return
    owners = {owner for owner, _ in by_owner}
    modes = {livemode for _, livemode in by_owner}

    def locked() -> dict[tuple[str, bool], EventStream]:
        # Locked in one order (by owner, mode) by every dispatcher: no deadlock between them.
        rows = (
            EventStream.objects.select_for_update()
            .filter(owner__in=owners, livemode__in=modes)
            .order_by("owner", "livemode")
        )
        return {(stream.owner, stream.livemode): stream for stream in rows}

    streams = locked()
    if any(stream not in streams for stream in by_owner):  # a merchant's first event (in a mode)
        EventStream.objects.bulk_create(
            [
                EventStream(owner=owner, livemode=livemode)
                for owner, livemode in by_owner
                if (owner, livemode) not in streams
            ],
            ignore_conflicts=True,
        )
        streams = locked()
    given: list[Event] = []
    try:
        _positions_give(by_owner, streams, given)
        bulk_writes.rows_update([streams[stream] for stream in by_owner], ["position"])
        _events_write(given if dispatched_at is None else events, dispatched_at=dispatched_at)
    except BaseException:
        for event in given:
            event.stream_position = None  # rolled back with the caller's transaction
        raise


def _needing_positions(events: list[Event]) -> dict[tuple[str, bool], list[Event]]:
    """The events still without a stream position, by stream (owner, mode), in list order."""
    by_owner: dict[tuple[str, bool], list[Event]] = {}
    for event in events:
        if event.owner and event.stream_position is None:
            by_owner.setdefault((event.owner, event.livemode), []).append(event)
    return by_owner


def _positions_give(
    by_owner: dict[tuple[str, bool], list[Event]],
    streams: dict[tuple[str, bool], EventStream],
    given: list[Event],
) -> None:
    """Number each stream's events on from its last position (streams locked by the caller);
    the events numbered are appended to ``given`` as they are, so the caller can take the
    positions back if its transaction fails."""
    for stream, owned in by_owner.items():
        for event in owned:
            streams[stream].position += 1
            event.stream_position = streams[stream].position
            given.append(event)


def _events_write(events: list[Event], *, dispatched_at: datetime | None) -> None:
    """The events' stream positions (and ``dispatched_at`` if given) in one statement."""
    if not events:
        return
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        if dispatched_at is not None:
            for event in events:
                event.dispatched_at = dispatched_at
        bulk_writes.rows_update(
            events, ["stream_position"] + ([] if dispatched_at is None else ["dispatched_at"])
        )
        return
    table = Event._meta.db_table
    mark = "" if dispatched_at is None else ", dispatched_at = %s"
    # The table name comes from the model's metadata, values are parameters.
    sql = (
        f"UPDATE {table} SET stream_position = v.position{mark} "  # noqa: S608
        "FROM unnest(CAST(%s AS bigint[]), CAST(%s AS bigint[])) AS v(id, position) "
        f"WHERE {table}.id = v.id"
    )
    columns = (
        bulk_writes.array_literal([event.pk for event in events]),
        bulk_writes.array_literal([event.stream_position for event in events]),
    )
    params = columns if dispatched_at is None else (dispatched_at, *columns)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def stream_position_assign(*, event: Event) -> int | None:
    """One event's stream position, given now if it has none (see ``_positions_write``)."""
    if not event.owner:
        return None
    with transaction.atomic():
        locked = Event.objects.select_for_update().get(pk=event.pk)
        _positions_write([locked])
    event.stream_position = locked.stream_position
    return event.stream_position


def _messages(events: list[Event]) -> list[tuple[list[str], dict]]:
    """(groups, message) per event for the Channels groups of its merchant and payment."""
    messages = []
    for event in events:
        groups = [owner_group(event.owner, livemode=event.livemode)] if event.owner else []
        if event.subject.startswith("pay_"):
            groups.append(f"payment.{event.subject}")
        if groups:
            message = {
                "type": "event.message",
                "event": event.envelope(),
                "position": event.stream_position,
            }
            messages.append((groups, message))
    return messages


# Groups sent to at once; each group's messages still go in order (stream positions).
FANOUT_CONCURRENCY = 32


# One flag per key, "1" when the group has a member: a single bulk reply to parse, where a
# pipeline of ZCARDs cost a reply (and redis-py's handling of it) per group, about a tenth of the
# delivery loop's time when every event has a payment group of its own.
_WATCHED_SCRIPT = """
local flags = {}
for i, key in ipairs(KEYS) do
  flags[i] = redis.call('ZCARD', key) > 0 and '1' or '0'
end
return table.concat(flags)
"""


async def _groups_watched(layer, groups: list[str]) -> set[str]:
    """The groups that have a member, in one script call per Redis shard: ``group_send``
    spends two round trips on every group before finding out, and most groups are empty (a
    payment's page is rarely open). A browser that joins after this check misses nothing: it
    joins, then replays the outbox from its position, and these events were committed first."""
    if not isinstance(layer, RedisChannelLayer):
        return set(groups)
    by_shard: dict[int, list[str]] = {}
    for group in groups:
        by_shard.setdefault(layer.consistent_hash(group), []).append(group)
    watched: set[str] = set()
    for index, shard in by_shard.items():
        keys = [layer._group_key(group) for group in shard]
        flags = await layer.connection(index).eval(_WATCHED_SCRIPT, len(keys), *keys)
        if isinstance(flags, bytes):
            flags = flags.decode()
        watched.update(group for group, flag in zip(shard, flags, strict=True) if flag == "1")
    return watched


async def _group_send_all(layer, messages: list[tuple[list[str], dict]]) -> None:
    per_group: dict[str, list[dict]] = {}
    for groups, message in messages:
        for group in groups:
            per_group.setdefault(group, []).append(message)
    try:
        watched = await _groups_watched(layer, list(per_group))
    except Exception as exc:  # Redis down: as when every group_send fails (see below)
        logger.error("channel layer: %d groups not sent (%r)", len(per_group), exc)
        return
    per_group = {group: queued for group, queued in per_group.items() if group in watched}
    gate = asyncio.Semaphore(FANOUT_CONCURRENCY)

    async def send(group: str, queued: list[dict]) -> None:
        async with gate:
            for message in queued:
                await layer.group_send(group, message)

    results = await asyncio.gather(
        *(send(group, queued) for group, queued in per_group.items()), return_exceptions=True
    )
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        # Browsers resume from the outbox by position; a lost message is never lost data.
        logger.error("channel layer: %d of %d groups not sent (%r)", len(failures),
                     len(results), failures[0])  # fmt: skip


def dispatch_events(*, event_ids: list[int]) -> int:
    """Fan the not-yet-dispatched events out, High first, and send them before returning:
    stream positions, webhook deliveries created and claimed, the events marked dispatched, all
    in one transaction; then browser groups and webhooks. Returns how many were dispatched.
    Embedded mode and one-off calls; the dispatcher process does the same on its loop
    (``DeliveryLoop.dispatch``). Idempotent, and safe with several dispatchers (events another
    one is dispatching are skipped, not waited for)."""
    events, claims = _dispatch_by_owner(event_ids)
    if not events:
        return 0
    messages = _messages(events)
    layer = get_channel_layer()
    if messages and layer is not None:
        try:
            async_to_sync(_group_send_all)(layer, messages)
        except Exception:  # a browser fan-out failure must not block webhooks
            logger.exception("channel layer send failed for %d events", len(events))
    delivery.claims_send(claims=claims)
    _count_dispatched(events)
    return len(events)


def _count_dispatched(events: list[Event]) -> None:
    for priority, count in Tally(event.priority for event in events).items():
        DISPATCHED.labels(priority).inc(count)


def _dispatch_by_owner(event_ids: list[int]) -> tuple[list[Event], list[Claim]]:
    """``_dispatch``, and after a database error each owner's events apart: an event whose
    position cannot be written stays undispatched (the requeue sweep brings it back), never sent
    without one, and one bad owner does not hold back the others."""
    try:
        return _dispatch(event_ids)
    except DatabaseError:
        if len(event_ids) == 1:
            logger.exception("event %s not dispatched; the requeue sweep retries it", event_ids)
            return [], []
    by_owner: dict[str, list[int]] = {}
    for pk, owner in Event.objects.filter(pk__in=event_ids).values_list("pk", "owner"):
        by_owner.setdefault(owner, []).append(pk)
    events: list[Event] = []
    claims: list[Claim] = []
    for owner, ids in by_owner.items():
        try:
            some, theirs = _dispatch(ids)
        except DatabaseError:
            logger.exception("events of %r not dispatched; the requeue sweep retries them", owner)
            continue
        events += some
        claims += theirs
    events.sort(key=lambda e: (PRIORITY_RANK[e.priority], e.pk))
    claims.sort(key=lambda claim: claim.priority)
    return events, claims


def _undispatched_locked(event_ids: list[int]) -> list[Event]:
    """The events not yet dispatched, locked; those another dispatcher holds are skipped. On
    PostgreSQL the ids go as one array literal: ``pk__in`` prepared and bound each id apart."""
    if transaction.get_connection().vendor != "postgresql":
        return list(
            Event.objects.select_for_update(skip_locked=True).filter(
                pk__in=event_ids, dispatched_at__isnull=True
            )
        )
    # The table name comes from the model's metadata, the ids are a parameter.
    # Columns named, not *: a prepared "SELECT *" fails once a migration adds a column.
    sql = (
        f"SELECT {_select_list(Event, Event._meta.db_table)} FROM {Event._meta.db_table} "  # noqa: S608
        "WHERE id = ANY(CAST(%s AS bigint[])) AND dispatched_at IS NULL FOR UPDATE SKIP LOCKED"
    )
    return list(Event.objects.raw(sql, [bulk_writes.array_literal(event_ids)]))


def _dispatch(event_ids: list[int]) -> tuple[list[Event], list[Claim]]:
    db = transaction.get_connection()
    # Several statements in one query, with the transaction's BEGIN and COMMIT: the project's
    # backend (resilience/postgresql).
    if db.vendor == "postgresql" and hasattr(db, "execute_beginning_each"):
        return _dispatch_postgresql(event_ids)
    with transaction.atomic():
        events = sorted(
            _undispatched_locked(event_ids), key=lambda e: (PRIORITY_RANK[e.priority], e.pk)
        )
        if not events:
            return [], []
        claims = delivery.deliveries_claim_new(events=events)
        # Late in the transaction: the owners' stream rows stay locked until the commit, and
        # every dispatcher with events of the same merchant waits for them.
        _positions_write(events, dispatched_at=clock.now())
    return events, claims


# Deliveries a dispatcher holds in memory before it stops taking new events (memory bound).
MAX_PENDING = 20_000
# Outcomes recorded per transaction.
RECORD_BATCH = 500
# How long outcomes are gathered before the recorder writes them: under load, a few large
# transactions instead of one per handful of answers (each costs the same ~4 round trips and
# competes with dispatching for the database and the GIL); a delivery's status lags this much.
RECORD_LINGER = 0.1


class DeliveryLoop:
    """The dispatcher's one asyncio loop, in a thread. On it: batches popped from Redis
    (``queues.Popper``) and dispatched over an asyncio PostgreSQL connection
    (``resilience.postgresql.asynchronous``), the webhook sender (pooled connections, a lane per
    endpoint) and the channel layer (one connection pool). Outcomes go to a recorder thread that
    writes them in bulk.

    Dispatch on the loop, not on a thread of its own: each of a batch's round trips there was a
    wait that gave the GIL up and a wake-up that took it back from the sending loop. Measured
    side by side (``bench/notifications.py``'s deliveries, 8 paired rounds of 2,000): one
    dispatcher went from 0.480x to 0.496x the minimal sender at the median, 6 rounds of 8
    better, and from 130 to 125 µs of CPU per delivery; a small gain, as the sends themselves
    were the larger part.

    The rare batches the two-round-trip dispatch does not cover (a merchant's first event in a
    mode, a database error that needs each owner's events tried apart) go the general way,
    ``_dispatch_by_owner`` through Django's ORM, on a thread kept for it."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        # Outcomes gathered on the loop, handed to the recorder a list at a time: one put per
        # outcome woke the recorder thread (and moved the GIL) once per delivery.
        self.outcomes: queue.SimpleQueue[list[Outcome] | None] = queue.SimpleQueue()
        self._gathered: list[Outcome] = []
        self._hand_over: asyncio.TimerHandle | None = None
        self._room = asyncio.Event()  # used on the loop only
        self._room.set()
        self.sender = Sender(on_outcome=self._taken)
        self.popper = queues.Popper()
        self._database: psycopg.AsyncConnection | None = None
        self._general = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatch-general")
        self._unrecorded = 0
        self._recorded = threading.Condition()
        self._fan_out_tail: asyncio.Task | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="webhooks", daemon=True)
        self._recorder = threading.Thread(target=self._record, name="recorder", daemon=True)
        self._thread.start()
        self._recorder.start()

    def _taken(self, outcome: Outcome) -> None:
        """On the loop: gather for up to RECORD_LINGER or RECORD_BATCH outcomes."""
        self._gathered.append(outcome)
        if len(self._gathered) >= RECORD_BATCH:
            self._hand_over_now()
        elif self._hand_over is None:
            self._hand_over = self.loop.call_later(RECORD_LINGER, self._hand_over_now)
        if not self._room.is_set() and self.sender.pending < MAX_PENDING:
            self._room.set()

    def _hand_over_now(self) -> None:
        if self._hand_over is not None:
            self._hand_over.cancel()
            self._hand_over = None
        if self._gathered:
            self.outcomes.put(self._gathered)
            self._gathered = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result (from another thread)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        while True:
            try:
                # In slices: a signal handler (SIGTERM's stop) runs between them.
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                continue

    async def wait_for_room(self, timeout: float) -> bool:
        if self._room.is_set():
            return True
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def dispatch(self, event_ids: list[int]) -> int:
        """``dispatch_events`` on the loop, the sends left to it: returns once the batch is
        committed and handed to the sender and the channel layer."""
        events, claims = await self._dispatched(event_ids)
        if not events:
            return 0
        messages = _messages(events)
        layer = get_channel_layer()
        if messages and layer is not None:
            self._fan_out_after(layer, messages)
        self._submit(claims)
        _count_dispatched(events)
        return len(events)

    async def _dispatched(self, event_ids: list[int]) -> tuple[list[Event], list[Claim]]:
        """``_dispatch_postgresql`` over the loop's own connection, in the same two round trips."""
        db = transaction.get_connection()
        if db.vendor != "postgresql" or not hasattr(db, "execute_beginning_each"):
            return await self._the_general_way(event_ids)
        query, params = _locking_query(event_ids)
        try:
            database = await self._connection()
            rows = await asynchronous.execute_beginning_each(database, query, params, statements=3)
            events, planned = _dispatch_planned(*rows)
            if planned is not None:
                returned = await asynchronous.execute_committing_rows(
                    database, planned.query, planned.params
                )
                return events, planned.claims(returned)
            await asynchronous.rollback(database)
        except psycopg.Error as exc:
            await self._rollback()
            logger.warning("%d events: %r; dispatching them the general way", len(event_ids), exc)
        except BaseException:
            await self._rollback()  # the next batch must not begin inside this one's transaction
            raise
        else:
            if not events:
                return [], []
        return await self._the_general_way(event_ids)

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._database is None or self._database.closed or self._database.broken:
            if self._database is not None:
                await self._database.close()
            self._database = await asynchronous.connect()
        return self._database

    async def _rollback(self) -> None:
        if self._database is None:
            return
        try:
            await asynchronous.rollback(self._database)
        except psycopg.Error:
            await self._database.close()  # a fresh one for the next batch

    async def _the_general_way(self, event_ids: list[int]) -> tuple[list[Event], list[Claim]]:
        return await self.loop.run_in_executor(self._general, _dispatch_by_owner_closing, event_ids)

    def _submit(self, claims: list[Claim]) -> None:
        if not claims:
            return
        with self._recorded:
            self._unrecorded += len(claims)
        if self.sender.pending + len(claims) >= MAX_PENDING:
            self._room.clear()
        self.sender.submit(claims)

    def _fan_out_after(self, layer, messages: list[tuple[list[str], dict]]) -> None:
        """Browser messages sent without waiting: each batch after the previous one, so every
        group gets its messages in position order."""
        previous = self._fan_out_tail

        async def send() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await _group_send_all(layer, messages)

        self._fan_out_tail = self.loop.create_task(send())

    def wait_idle(self, timeout: float) -> bool:
        """Until every submitted delivery is sent and recorded (shutdown, tests)."""
        with self._recorded:
            return self._recorded.wait_for(lambda: self._unrecorded == 0, timeout=timeout)

    def close(self, timeout: float) -> None:
        self.wait_idle(timeout)

        async def finish() -> None:
            if self._fan_out_tail is not None:
                await asyncio.wait([self._fan_out_tail], timeout=10)
            await self.sender.close()
            self._hand_over_now()
            await self.popper.close()
            if self._database is not None:
                await self._database.close()

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self._general.shutdown()
        self.outcomes.put(None)
        self._recorder.join(timeout=30)
        self.loop.close()

    def _record(self) -> None:
        done = False
        while not done:
            first = self.outcomes.get()
            if first is None:
                break
            batch = list(first)
            while len(batch) < RECORD_BATCH:  # and whatever else is waiting already
                try:
                    more = self.outcomes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                batch += more
            self._record_batch(batch)
        connection.close()  # this thread's: back to the pool

    def _record_batch(self, batch: list[Outcome]) -> None:
        try:
            for attempt in stamina.retry_context(on=DatabaseError, attempts=5, timeout=30):
                with attempt:
                    if attempt.num > 1:
                        # After an error only: handing the connection back to the pool after
                        # every batch cost a health-check round trip at the next one.
                        close_old_connections()
                    delivery.attempts_record(outcomes=batch)
        except DatabaseError:
            # The claims' leases run out and the sweep retries them: sent again, not lost.
            logger.exception("%d webhook outcomes not recorded", len(batch))
        finally:
            with self._recorded:
                self._unrecorded -= len(batch)
                self._recorded.notify_all()


def _dispatch_by_owner_closing(event_ids: list[int]) -> tuple[list[Event], list[Claim]]:
    """``_dispatch_by_owner`` on the general thread, its connection back to the pool after."""
    try:
        return _dispatch_by_owner(event_ids)
    finally:
        close_old_connections()


class Dispatcher:
    def __init__(
        self,
        *,
        batching: AdaptiveBatching | None = None,
        on_batch: Callable[[Batching, int], None] | None = None,
    ) -> None:
        self.batching = batching or AdaptiveBatching()
        self.on_batch = on_batch
        self._stop = threading.Event()
        self.processed = 0
        self._queued: int | None = None  # events queued when the last pop looked
        self._runtime: DeliveryLoop | None = None

    @property
    def runtime(self) -> DeliveryLoop:
        if self._runtime is None:
            self._runtime = DeliveryLoop()
        return self._runtime

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        """One batch, from another thread than the loop's (tests)."""
        return self.runtime.run(self._batch())

    async def _batch(self) -> int:
        runtime = self.runtime
        if not await runtime.wait_for_room(timeout=1.0):
            return 0  # enough in hand: let the sends catch up before taking more
        if self._queued is None:  # a fresh start: the backlog it finds sizes its first batch
            _, sizes = await runtime.popper.pop_available(size=0)
            self._queued = sum(sizes.values())
        # The load as the previous pop found it: a pop reads the queues' lengths in its own
        # round trip (one under load, where reading them first and popping took four).
        batching = self.batching.observe(self._queued)
        BATCH_SIZE.set(batching.size)
        BATCH_INTERVAL.set(batching.interval)
        batch, sizes = await runtime.popper.pop_available(size=batching.size)
        if not batch:
            batch, sizes = await runtime.popper.pop_batch(
                size=batching.size, wait=batching.interval
            )
        for priority, size in sizes.items():
            QUEUE_SIZE.labels(priority).set(size)
        self._queued = sum(sizes.values())
        if not batch:
            return 0
        # The whole batch in one transaction: each costs the same round trips whatever its
        # size. A High event that arrives meanwhile waits for this one batch (at most
        # NOTIFY_BATCHING's 200 events, 10-30 ms here). In bench/notifications.py, 200 at once
        # rather than two transactions of 100 with a look for High between took one dispatcher
        # from 0.34x to 0.40x the minimal sender over 10,000 events (medians of 5 paired runs;
        # 0.395x to 0.405x over the bench's 2,000, which start with batches of 50), and High
        # p99 under a Low flood from 22 to 29 ms (goal 250).
        done = await runtime.dispatch([event_id for _, event_id in batch])
        self.processed += done
        if self.on_batch:
            self.on_batch(batching, len(batch))
        return done

    def wait_idle(self, timeout: float) -> bool:
        """Until every webhook handed to the loop is sent and recorded."""
        return self._runtime is None or self._runtime.wait_idle(timeout)

    def close(self) -> None:
        if self._runtime is not None:
            retries = settings.NOTIFY_HIGH_PRIORITY_RETRIES + 1
            self._runtime.close(timeout=settings.WEBHOOK_TIMEOUT.total_seconds() * retries + 1)
            self._runtime = None

    def run(self, *, max_seconds: float | None = None) -> None:
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        logger.info("dispatcher started")
        try:
            self.runtime.run(self._serve(deadline))
        finally:
            self.close()
        logger.info("dispatcher stopped after %d events", self.processed)

    async def _serve(self, deadline: float | None) -> None:
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                await self._batch()
            except Exception:
                logger.exception("dispatcher batch failed; retrying")
                await asyncio.sleep(1)


def _select_list(model: type[Model], alias: str) -> str:
    """Every concrete column of ``model``, in field order (what ``Model.from_db`` takes)."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(str(field.column))}" for field in model._meta.concrete_fields)


def _instances(model: type[M], rows: list[tuple]) -> list[M]:
    """Model instances from rows of ``_select_list`` columns, converted as the ORM does (a JSON
    column arrives as text, for instance)."""
    # The connection itself, not django.db.connection: an attribute read through that proxy
    # fails the normal lookup first (an AttributeError raised and caught), then looks the
    # thread's connection up again; this read the alias so once per row.
    connection = transaction.get_connection()
    fields = model._meta.concrete_fields
    columns = [field.get_col(model._meta.db_table) for field in fields]
    converters = [
        (index, converting)
        for index, column in enumerate(columns)
        if (
            converting := [
                *connection.ops.get_db_converters(column),
                *column.get_db_converters(connection),
            ]
        )
    ]
    names = [field.attname for field in fields]
    alias = connection.alias
    instances = []
    for row in rows:
        values = list(row)
        for index, converting in converters:
            for convert in converting:
                values[index] = convert(values[index], columns[index], connection)
        instances.append(model.from_db(alias, names, values))
    return instances


def _dispatch_postgresql(event_ids: list[int]) -> tuple[list[Event], list[Claim]]:
    """``_dispatch`` in two round trips where it took eight (``_locking_query``, then the
    statements of ``_dispatch_planned``), each with the transaction's BEGIN or COMMIT. Sent
    together as one query (a client-binding cursor: the server binds one statement at a time;
    ``resilience.postgresql`` adds the BEGIN and COMMIT), so each trip is one wait for the
    database, and one wait for this thread's turn at the GIL after it."""
    query, params = _locking_query(event_ids)
    db = transaction.get_connection()
    with transaction.atomic():
        rows = db.execute_beginning_each(query, params, statements=3)
        events, planned = _dispatch_planned(*rows)
        if not events:
            return [], []
        if planned is None:
            # A merchant's first event (in a mode): the general way, rows created then locked.
            claims = delivery.deliveries_claim_new(events=events)
            _positions_write(events, dispatched_at=clock.now())
            return events, claims
        try:
            # The transaction's COMMIT goes with them: nothing below touches the database.
            returned = db.execute_committing_rows(planned.query, planned.params)
            return events, planned.claims(returned)
        except BaseException:
            planned.undo()
            raise


def _locking_query(event_ids: list[int]) -> tuple[str, list]:
    """The first round trip of a batch's dispatch: three statements that lock the events
    (skipping those another dispatcher holds), read the endpoints that may want them and lock
    their owners' stream rows (in one order, by owner and mode, as every dispatcher does: no
    deadlock between them)."""
    ids = bulk_writes.array_literal(event_ids)
    event, endpoint = Event._meta.db_table, WebhookEndpoint._meta.db_table
    stream = EventStream._meta.db_table
    # Table and column names come from the models' metadata, values are parameters. Events are
    # read by key, one lookup per id (``rows_by_key``); an event already dispatched is locked
    # too, then left out (harmless: nothing else writes it). The subqueries read the ids' events
    # again rather than wait for the first result: candidates for events another dispatcher
    # holds are filtered out later, as are their streams' locks (held until the commit,
    # harmless).
    locked_events = bulk_writes.rows_by_key(
        event, _select_list(Event, event), alias="e", lock="FOR UPDATE SKIP LOCKED"
    )
    keyed_events = bulk_writes.rows_by_key(
        event, "owner, livemode, type, stream_position, dispatched_at", alias="e"
    )
    query = f"""
        SELECT {_select_list(Event, "e")} FROM {locked_events}
        WHERE e.dispatched_at IS NULL;
        WITH batch_events AS MATERIALIZED (
            SELECT e.owner, e.livemode, e.type FROM {keyed_events})
        SELECT {_select_list(WebhookEndpoint, "w")} FROM {endpoint} AS w
        WHERE w.enabled AND (
            (w.owner, w.livemode) IN (
                SELECT owner, livemode FROM batch_events WHERE owner <> '')
            OR EXISTS (
                SELECT 1 FROM batch_events
                WHERE owner = '' AND w.event_types @> jsonb_build_array(batch_events.type)));
        SELECT s.id, s.owner, s.livemode, s.position FROM {stream} AS s
        WHERE (s.owner, s.livemode) IN (
            SELECT e.owner, e.livemode FROM {keyed_events}
            WHERE e.owner <> '' AND e.stream_position IS NULL AND e.dispatched_at IS NULL)
        ORDER BY s.owner, s.livemode FOR UPDATE
    """  # noqa: S608
    return query, [ids] * 3


@dataclass
class _Planned:
    """A batch between its two round trips: the statements that insert its deliveries claimed,
    move its streams on and mark its events dispatched with their positions (``query``,
    ``params``), and how to read the claims from what they return."""

    events: list[Event]
    wanted: dict[int, list[WebhookEndpoint]]
    given: list[Event]
    query: str
    params: list
    until: datetime | None  # the claims' lease end; None when no endpoint wants any event

    def claims(self, returned: list[tuple]) -> list[Claim]:
        inserted = [] if self.until is None else delivery.claimed_rows(returned, until=self.until)
        return delivery.deliveries_claims_complete(
            events=self.events, wanted=self.wanted, inserted=inserted
        )

    def undo(self) -> None:
        """The positions given back: the transaction that wrote them rolled back."""
        for event in self.given:
            event.stream_position = None


def _dispatch_planned(
    event_rows: list[tuple], endpoint_rows: list[tuple], stream_rows: list[tuple]
) -> tuple[list[Event], _Planned | None]:
    """From the rows of ``_locking_query``: the events to dispatch, High first, and the
    statements that finish their dispatch; None for those when an owner has no stream row yet
    (a merchant's first event in a mode: the general way, ``_dispatch``, creates it). No
    database work."""
    events = sorted(_instances(Event, event_rows), key=lambda e: (PRIORITY_RANK[e.priority], e.pk))
    if not events:
        return [], None
    wanted = delivery.endpoints_matching(
        events=events, candidates=_instances(WebhookEndpoint, endpoint_rows)
    )
    streams = {
        (owner, livemode): EventStream(pk=pk, owner=owner, livemode=livemode, position=at)
        for pk, owner, livemode, at in stream_rows
    }
    by_owner = _needing_positions(events)
    if any(key not in streams for key in by_owner):
        return events, None
    now = clock.now()
    given: list[Event] = []
    try:
        _positions_give(by_owner, streams, given)
        statements: list[str] = []
        params: list = []
        insert = delivery.claimed_insert_statement(events, wanted, now=now)
        if insert is not None:
            statements.append(insert[0])
            params += insert[1]
        event, stream = Event._meta.db_table, EventStream._meta.db_table
        if by_owner:
            moved = [streams[key] for key in by_owner]
            statements.append(
                f"UPDATE {stream} SET position = v.position "  # noqa: S608
                "FROM unnest(CAST(%s AS bigint[]), CAST(%s AS bigint[])) AS v(id, position) "
                f"WHERE {stream}.id = v.id"
            )
            params += [
                bulk_writes.array_literal([row.pk for row in moved]),
                bulk_writes.array_literal([row.position for row in moved]),
            ]
        statements.append(
            f"UPDATE {event} SET stream_position = v.position, dispatched_at = %s "  # noqa: S608
            "FROM unnest(CAST(%s AS bigint[]), CAST(%s AS bigint[])) AS v(id, position) "
            f"WHERE {event}.id = v.id"
        )
        params += [
            now,
            bulk_writes.array_literal([one.pk for one in events]),
            bulk_writes.array_literal([one.stream_position for one in events]),
        ]
    except BaseException:
        for one in given:
            one.stream_position = None
        raise
    planned = _Planned(
        events=events,
        wanted=wanted,
        given=given,
        query=";\n".join(statements),
        params=params,
        until=None if insert is None else insert[2],
    )
    return events, planned
