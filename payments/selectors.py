"""Reads. Every selector is scoped to one merchant: another merchant's objects do not exist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.http import Http404

from cryptopay.pagination import Page, newest_first
from payments.models import Merchant, Payment


def payment_get(*, merchant: Merchant, public_id: str) -> Payment:
    payment = Payment.objects.filter(merchant=merchant, public_id=public_id).first()
    if payment is None:
        raise Http404("No such payment.")
    return payment


@dataclass(frozen=True)
class PaymentFilters:
    status: str | None = None
    order_id: str | None = None
    created_gte: datetime | None = None
    created_lt: datetime | None = None


def payment_list(
    *,
    merchant: Merchant,
    filters: PaymentFilters,
    limit: int,
    starting_after: str | None = None,
) -> Page[Payment]:
    """Newest first; ``starting_after`` is the id of the last payment of the previous page.

    A keyset cursor on (created_at, id) stays correct while payments are being created.
    """
    qs: QuerySet[Payment] = Payment.objects.filter(merchant=merchant)
    if filters.status:
        qs = qs.filter(status=filters.status)
    if filters.order_id:
        qs = qs.filter(order_id=filters.order_id)
    if filters.created_gte:
        qs = qs.filter(created_at__gte=filters.created_gte)
    if filters.created_lt:
        qs = qs.filter(created_at__lt=filters.created_lt)
    cursor = None
    if starting_after:
        found = payment_get(merchant=merchant, public_id=starting_after)
        cursor = (found.created_at, found.pk)
    return newest_first(qs, limit=limit, cursor=cursor)


def merchant_choices() -> list[tuple[str, str]]:
    """(public id, "name (public id)") of every merchant, by name: the webhook endpoint admin's
    owner select."""
    return [
        (public_id, f"{name} ({public_id})")
        for public_id, name in Merchant.objects.order_by("name", "pk").values_list(
            "public_id", "name"
        )
    ]
