"""The dispatcher: drains the priority queues and fans events out to browsers and webhooks.

Adaptive batching (the seed's numbers): the load is the mean number of queued events over the last
NOTIFY_LOAD_WINDOW samples; at or above NOTIFY_HIGH_LOAD_THRESHOLD it takes batches of 200 and
waits at most 100 ms for work, below NOTIFY_LOW_LOAD_THRESHOLD batches of 10 and up to 5 s, in
between 50 and 1 s. Waiting is a blocking pop, so a new event (High first) wakes it at once: the
interval bounds idle polling, it never delays an event that is already there.

Several dispatchers may run: Redis hands each id to one of them, and everything done per event is
idempotent (deliveries are unique per endpoint and event; browsers and webhook receivers
deduplicate by event id), so at-least-once never becomes twice-processed state. An id lost with a
dying dispatcher is queued again from the outbox (``events_requeue_lost``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, connections, transaction
from prometheus_client import Counter, Gauge

from notifications import queues, services
from notifications.models import Event, EventStream, Priority, WebhookDelivery
from resilience import clock

logger = logging.getLogger(__name__)

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


def stream_position_assign(*, event: Event) -> int | None:
    """The event's place in its owner's live stream: 1, 2, 3… in dispatch order, without gaps.

    Dispatch order, not creation order: a High event overtakes a Normal one, a lost queue is
    rebuilt from the outbox, and a client must still get each of them once. Without gaps, so a
    consumer that sees position P+2 after P knows P+1 is missing and reads it from the outbox
    (it is committed: the owner's row lock orders the positions). Given once; a re-dispatch
    keeps it. System events (no owner) are in no merchant stream.
    """
    if not event.owner:
        return None
    for _attempt in range(5):
        if event.stream_position is not None:
            return event.stream_position
        try:
            with transaction.atomic():
                EventStream.objects.get_or_create(owner=event.owner)
                stream = EventStream.objects.select_for_update().get(owner=event.owner)
                taken = (
                    Event.objects.filter(pk=event.pk)
                    .values_list("stream_position", flat=True)
                    .first()
                )
                if taken is None:
                    stream.position += 1
                    stream.save(update_fields=["position"])
                    Event.objects.filter(pk=event.pk).update(stream_position=stream.position)
                    taken = stream.position
        except IntegrityError:
            continue  # two dispatchers created the owner's row at once: take the lock again
        event.stream_position = taken
    if event.stream_position is None:
        raise RuntimeError(f"event {event.public_id}: no stream position after 5 attempts")
    return event.stream_position


def _channels_send(event: Event) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {
        "type": "event.message",
        "event": event.envelope(),
        "position": stream_position_assign(event=event),
    }
    groups = [f"merchant.{event.owner}"] if event.owner else []
    if event.subject.startswith("pay_"):
        groups.append(f"payment.{event.subject}")
    if groups:
        async_to_sync(_group_send_all)(layer, groups, message)


async def _group_send_all(layer, groups: list[str], message: dict) -> None:  # type: ignore[no-untyped-def]
    # One event loop round trip for all groups: each async_to_sync call costs a few ms.
    for group in groups:
        await layer.group_send(group, message)


DELIVERY_WORKERS = 8
# How many events of a batch are handled before looking for newly arrived High events.
YIELD_EVERY = 10


def _deliver_in_thread(delivery_id: int, immediate_retries: int) -> str:
    try:
        return services.webhook_deliver(
            delivery_id=delivery_id, immediate_retries=immediate_retries
        )
    finally:
        # Closed after each delivery: an idle pool thread holding a connection would pin it
        # (and keep a test database from being dropped); reconnecting costs a few ms.
        connections.close_all()


_pool: ThreadPoolExecutor | None = None
_pool_guard = threading.Lock()
# Deliveries in flight in this process; beyond this the sweep takes them (they are persisted).
MAX_IN_FLIGHT = DELIVERY_WORKERS * 32
_in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
_idle = threading.Condition()
_running = 0


def _running_change(delta: int) -> None:
    global _running
    with _idle:
        _running += delta
        _idle.notify_all()


def wait_for_deliveries(timeout: float) -> bool:
    """Block until this process has no background delivery running (shutdown, tests)."""
    with _idle:
        return _idle.wait_for(lambda: _running == 0, timeout=timeout)


def _background_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=DELIVERY_WORKERS, thread_name_prefix="webhook")
        return _pool


def _deliver_all(
    deliveries: list[WebhookDelivery], *, immediate_retries: int, wait: bool = True
) -> None:
    """Attempt an event's deliveries side by side, so a slow, hanging or retried endpoint does not
    hold back the event's other endpoints. With ``wait=False`` (the dispatcher loop) they run in
    the background and the dispatcher goes on with the next event at once: a dead endpoint never
    holds back later events either. One delivery, or a caller inside a transaction (other
    threads could not see its rows), stays on this thread."""
    if connection.in_atomic_block or (wait and len(deliveries) <= 1):
        for delivery in deliveries:
            services.webhook_deliver(delivery_id=delivery.pk, immediate_retries=immediate_retries)
        return
    if not wait:
        pool = _background_pool()
        for delivery in deliveries:
            if not _in_flight.acquire(blocking=False):
                logger.warning("delivery backlog full; %s left to the sweep", delivery.pk)
                continue

            def run(delivery_id: int = delivery.pk) -> None:
                try:
                    _deliver_in_thread(delivery_id, immediate_retries)
                except Exception:
                    logger.exception(
                        "delivery %s failed unexpectedly; the sweep retries it", delivery_id
                    )
                finally:
                    _in_flight.release()
                    _running_change(-1)

            _running_change(+1)
            pool.submit(run)
        return
    with ThreadPoolExecutor(
        max_workers=min(len(deliveries), DELIVERY_WORKERS), thread_name_prefix="webhook"
    ) as pool:
        futures = [
            pool.submit(_deliver_in_thread, delivery.pk, immediate_retries)
            for delivery in deliveries
        ]
    for future in futures:
        future.result()  # an unexpected error fails the batch, as it did when sequential


def dispatch_events(*, event_ids: list[int], wait: bool = True) -> int:
    """Fan each not-yet-dispatched event out; returns how many were dispatched. Idempotent.
    ``wait=False`` leaves webhook attempts running in the background."""
    events = Event.objects.filter(pk__in=event_ids, dispatched_at__isnull=True)
    order = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
    done = 0
    for event in sorted(events, key=lambda e: (order[e.priority], e.pk)):
        try:
            _channels_send(event)
        except Exception:  # a browser fan-out failure must not block webhooks
            logger.exception("event %s: channel layer send failed", event.public_id)
        retries = settings.NOTIFY_HIGH_PRIORITY_RETRIES if event.priority == Priority.HIGH else 0
        _deliver_all(services.deliveries_create(event=event), immediate_retries=retries, wait=wait)
        Event.objects.filter(pk=event.pk, dispatched_at__isnull=True).update(
            dispatched_at=clock.now()
        )
        DISPATCHED.labels(event.priority).inc()
        done += 1
    return done


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

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        sizes = queues.sizes()
        for priority, size in sizes.items():
            QUEUE_SIZE.labels(priority).set(size)
        batching = self.batching.observe(sum(sizes.values()))
        BATCH_SIZE.set(batching.size)
        BATCH_INTERVAL.set(batching.interval)
        batch = queues.pop_batch(size=batching.size, wait=batching.interval)
        if not batch:
            return 0
        done = 0
        for start in range(0, len(batch), YIELD_EVERY):
            chunk = batch[start : start + YIELD_EVERY]
            done += dispatch_events(event_ids=[event_id for _, event_id in chunk], wait=False)
            rest = batch[start + YIELD_EVERY :]
            if rest and rest[0][0] != "high" and queues.has_high():
                # A High event arrived meanwhile: put the rest back in front, in order, and
                # take the High one first.
                queues.push_front(rest)
                break
        self.processed += done
        if self.on_batch:
            self.on_batch(batching, len(batch))
        return done

    def run(self, *, max_seconds: float | None = None) -> None:
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        logger.info("dispatcher started")
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                self.run_once()
            except Exception:
                logger.exception("dispatcher batch failed; retrying")
                self._stop.wait(1)
            finally:
                close_old_connections()
        wait_for_deliveries(timeout=settings.WEBHOOK_TIMEOUT.total_seconds() * 2)
        logger.info("dispatcher stopped after %d events", self.processed)
