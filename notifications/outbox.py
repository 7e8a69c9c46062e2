"""The outbox: events written in the caller's transaction, queued for the dispatcher once it
commits, and queued again when Redis lost them."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from notifications import queues
from notifications.event_types import event_priority
from notifications.models import Event
from resilience import clock

logger = logging.getLogger(__name__)


def event_publish(
    *,
    owner: str,
    type: str,
    subject: str = "",
    sequence: int = 0,
    data: dict[str, Any],
    livemode: bool = True,
) -> Event:
    """Write the event in the caller's transaction; queue it once that transaction commits.
    ``livemode`` False: a test-mode event, for the owner's test endpoints and stream only."""
    event = event_prepare(
        Event(
            owner=owner, type=type, subject=subject, sequence=sequence, livemode=livemode, data=data
        )
    )
    event.save(force_insert=True)
    event_queue_on_commit(event)
    return event


def event_prepare(event: Event) -> Event:
    """What ``event_publish`` sets on the event besides the caller's fields (its priority and
    time), for a caller that inserts it in a statement of its own and then calls
    ``event_queue_on_commit``."""
    event.priority = event_priority(event.type)
    event.created_at = clock.now()
    return event


def event_queue_on_commit(event: Event) -> None:
    """Queue a written event for the dispatcher once the caller's transaction commits."""
    transaction.on_commit(lambda: queues.enqueue(event_id=event.pk, priority=event.priority))


def events_publish(*, events: list[Event]) -> list[Event]:
    """``event_publish`` for many at once (a chain block's worth): one INSERT in the caller's
    transaction, one Redis round trip once it commits. ``events`` are unsaved ``Event``s with
    owner, type, subject, sequence, livemode and data set."""
    if not events:
        return []
    now = clock.now()
    for event in events:
        event.priority = event_priority(event.type)
        event.created_at = now
    Event.objects.bulk_create(events)
    queued = [(event.pk, event.priority) for event in events]
    transaction.on_commit(lambda: queues.enqueue_many(queued))
    return events


def events_requeue_lost() -> int:
    """Queue again the events no dispatcher has handled for NOTIFY_REQUEUE_AFTER (Redis lost them,
    or a dispatcher died holding them), whether or not the queues are draining a backlog: an id
    still waiting in a queue is not lost and is left alone. Dispatching is idempotent, so the one
    a live dispatcher is handling right now costs a lookup if queued twice."""
    cutoff = clock.now() - settings.NOTIFY_REQUEUE_AFTER
    candidates = list(
        Event.objects.filter(dispatched_at__isnull=True, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", "priority")[:10_000]
    )
    if not candidates:
        return 0
    waiting = queues.queued_ids()
    lost = [(event_id, priority) for event_id, priority in candidates if event_id not in waiting]
    queues.enqueue_many(lost)
    if lost:
        logger.warning("re-queued %d undispatched events from the outbox", len(lost))
    return len(lost)
