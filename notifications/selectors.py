"""Reads for notifications. Every selector is scoped to one owner (a merchant's public id) and one
mode (``livemode``): another owner's endpoints, events and deliveries do not exist, and neither do
test ones for a live caller nor live ones for a test caller."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.http import Http404

from accounts.pagination import Page
from accounts.pagination import after as _after
from accounts.pagination import page_of as _page
from notifications.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint

# --- endpoints ----------------------------------------------------------------------------------


def webhook_endpoint_get(*, owner: str, public_id: str, livemode: bool = True) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(
        owner=owner, livemode=livemode, public_id=public_id
    ).first()
    if endpoint is None:
        raise Http404("No such webhook endpoint.")
    return endpoint


def webhook_endpoint_list(
    *, owner: str, limit: int, starting_after: str | None = None, livemode: bool = True
) -> Page[WebhookEndpoint]:
    """Newest first; ``starting_after`` is the id of the last endpoint of the previous page."""
    qs = WebhookEndpoint.objects.filter(owner=owner, livemode=livemode)
    if starting_after:
        cursor = webhook_endpoint_get(owner=owner, public_id=starting_after, livemode=livemode)
        qs = qs.filter(_after(cursor.created_at, cursor.pk))
    return _page(qs.order_by("-created_at", "-pk"), limit=limit)


# --- deliveries ---------------------------------------------------------------------------------


def _with_log(qs: QuerySet[WebhookDelivery]) -> QuerySet[WebhookDelivery]:
    return qs.select_related("endpoint", "event").prefetch_related(
        Prefetch("log", queryset=WebhookAttempt.objects.order_by("attempted_at", "pk"))
    )


def webhook_delivery_list(
    *, endpoint: WebhookEndpoint, limit: int, starting_after: str | None = None
) -> Page[WebhookDelivery]:
    """An endpoint's deliveries, newest first, with their attempt logs. A delivery is identified
    by its event within the endpoint, so ``starting_after`` is the event id of the last delivery
    of the previous page."""
    qs = WebhookDelivery.objects.filter(endpoint=endpoint)
    if starting_after:
        cursor = qs.filter(event__public_id=starting_after).first()
        if cursor is None:
            raise Http404("No such delivery.")
        qs = qs.filter(_after(cursor.created_at, cursor.pk))
    return _page(_with_log(qs).order_by("-created_at", "-pk"), limit=limit)


def webhook_deliveries_of_event(
    *, event: Event, endpoint: WebhookEndpoint | None = None
) -> list[WebhookDelivery]:
    """The owner's deliveries of one event (to one endpoint if given), oldest endpoint first."""
    qs = WebhookDelivery.objects.filter(
        event=event, endpoint__owner=event.owner, endpoint__livemode=event.livemode
    )
    if endpoint is not None:
        qs = qs.filter(endpoint=endpoint)
    return list(_with_log(qs).order_by("endpoint__created_at", "pk"))


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilters:
    type: str | None = None
    subject: str | None = None
    created_gte: datetime | None = None
    created_lt: datetime | None = None
    # False: something still to deliver (a delivery not succeeded, or none although an enabled
    # endpoint, existing when the event happened, wants its type). True: at least one delivery,
    # all succeeded.
    delivery_success: bool | None = None


def _events(owner: str, livemode: bool) -> QuerySet[Event]:
    deliveries = WebhookDelivery.objects.filter(endpoint__owner=owner, endpoint__livemode=livemode)
    return Event.objects.filter(owner=owner, livemode=livemode).prefetch_related(
        Prefetch(
            "deliveries",
            queryset=_with_log(deliveries).order_by("endpoint__created_at", "pk"),
        )
    )


def event_get(*, owner: str, public_id: str, livemode: bool = True) -> Event:
    # ``owner`` is never empty here: system-wide events (owner "") are nobody's to read.
    event = _events(owner, livemode).filter(public_id=public_id).first() if owner else None
    if event is None:
        raise Http404("No such event.")
    return event


def _wanted_by_an_endpoint(owner: str, livemode: bool) -> Q | None:
    """Events that one of the owner's enabled endpoints wants and existed for; None if no
    endpoint wants anything. (An owner has a handful of endpoints: reading them beats a JSON
    containment test per event.) An endpoint added later was never meant to get older events."""
    wanted = Q()
    found = False
    for created_at, event_types in WebhookEndpoint.objects.filter(
        owner=owner, livemode=livemode, enabled=True
    ).values_list("created_at", "event_types"):
        condition = Q(created_at__gte=created_at)
        if event_types:
            condition &= Q(type__in=event_types)
        wanted |= condition
        found = True
    return wanted if found else None


def _delivery_filter(owner: str, livemode: bool, success: bool) -> Q:
    deliveries = WebhookDelivery.objects.filter(
        event=OuterRef("pk"), endpoint__owner=owner, endpoint__livemode=livemode
    )
    unsucceeded = Q(Exists(deliveries.exclude(status=WebhookDelivery.Status.SUCCEEDED)))
    any_delivery = Q(Exists(deliveries))
    if success:
        return any_delivery & ~unsucceeded
    wanted = _wanted_by_an_endpoint(owner, livemode)
    if wanted is None:
        return unsucceeded
    return unsucceeded | (~any_delivery & wanted)


def event_list(
    *,
    owner: str,
    filters: EventFilters,
    limit: int,
    starting_after: str | None = None,
    livemode: bool = True,
) -> Page[Event]:
    """The owner's events, newest first, each with its deliveries to the owner's endpoints.

    A keyset cursor on (created_at, id), like payments, so pages stay correct while events are
    being written.
    """
    if not owner:
        return Page(items=[], has_more=False)
    qs = _events(owner, livemode)
    if filters.type:
        qs = qs.filter(type=filters.type)
    if filters.subject:
        qs = qs.filter(subject=filters.subject)
    if filters.created_gte:
        qs = qs.filter(created_at__gte=filters.created_gte)
    if filters.created_lt:
        qs = qs.filter(created_at__lt=filters.created_lt)
    if filters.delivery_success is not None:
        qs = qs.filter(_delivery_filter(owner, livemode, filters.delivery_success))
    if starting_after:
        cursor = Event.objects.filter(
            owner=owner, livemode=livemode, public_id=starting_after
        ).first()
        if cursor is None:
            raise Http404("No such event.")
        qs = qs.filter(_after(cursor.created_at, cursor.pk))
    return _page(qs.order_by("-created_at", "-pk"), limit=limit)
