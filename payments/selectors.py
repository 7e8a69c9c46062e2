"""Reads. Every selector is scoped to one merchant and one mode: another merchant's objects do not
exist, and neither do test payments for a live key nor live payments for a test key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404

from accounts.models import Merchant
from accounts.pagination import Page, newest_first
from cryptopay.compiled_query import CompiledQuery
from payments.chains.config import chain_for_currency
from payments.currencies import CRYPTO_CURRENCIES
from payments.errors import PaymentInOtherMode
from payments.models import MerchantWallet, Payment, PaymentOption


def merchant_accepted_currencies(*, merchant: Merchant, livemode: bool = True) -> list[str]:
    """The coins a payment of ``merchant`` can be paid in when the merchant names none: every
    currency with a wallet on a configured chain, and every one on the development chain (which
    is where every test payment is paid)."""
    if settings.DEV_CHAIN_ENABLED or not livemode:
        return list(CRYPTO_CURRENCIES)
    with_wallet = set(
        MerchantWallet.objects.filter(merchant=merchant).values_list("crypto_currency", flat=True)
    )
    return [code for code in CRYPTO_CURRENCIES if code in with_wallet and chain_for_currency(code)]


def payment_options(*, payment: Payment) -> list[PaymentOption]:
    """The coins the buyer may pick from, in the order the merchant listed them."""
    return list(PaymentOption.objects.filter(payment=payment).select_related("payment"))


# The API's read of one payment, on every GET and cancel: its SQL is compiled once.
_PAYMENT_BY_PUBLIC_ID = CompiledQuery(
    lambda merchant_id, livemode, public_id: Payment.objects.filter(
        merchant_id=merchant_id, livemode=livemode, public_id=public_id
    ),
    merchant_id=-1,
    livemode=False,
    public_id="pay_compiled_example",
)


def payment_get(*, merchant: Merchant, public_id: str, livemode: bool = True) -> Payment:
    payment = _PAYMENT_BY_PUBLIC_ID.first(
        merchant_id=merchant.pk, livemode=livemode, public_id=public_id
    )
    if payment is None:
        _other_mode_check(merchant=merchant, public_id=public_id, livemode=livemode)
        raise Http404("No such payment.")
    return payment


def _other_mode_check(*, merchant: Merchant, public_id: str, livemode: bool) -> None:
    """Stripe's hint when the id is the merchant's own payment in the other mode (a key mix-up):
    still a 404 (``PaymentInOtherMode`` is one). Another merchant's ids stay unconfirmed."""
    if Payment.objects.filter(
        merchant=merchant, livemode=not livemode, public_id=public_id
    ).exists():
        used, other = ("live", "test") if livemode else ("test", "live")
        raise PaymentInOtherMode(
            f"No such payment: {public_id} exists in {other} mode, but a {used} mode key was "
            "used to make this request."
        )


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
    livemode: bool = True,
) -> Page[Payment]:
    """Newest first; ``starting_after`` is the id of the last payment of the previous page.

    A keyset cursor on (created_at, id) stays correct while payments are being created.
    """
    qs: QuerySet[Payment] = Payment.objects.filter(merchant=merchant, livemode=livemode)
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
        found = payment_get(merchant=merchant, public_id=starting_after, livemode=livemode)
        cursor = (found.created_at, found.pk)
    return newest_first(qs, limit=limit, cursor=cursor)
