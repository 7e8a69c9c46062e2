"""The payment state machine, declared in one place.

Statuses and transitions follow BTCPay Server's invoice model, with
``cancelled`` added for merchants. Sub-statuses qualify a status without changing it.
"""

from __future__ import annotations

from django.db import models


class PaymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    SETTLED = "settled", "Settled"
    EXPIRED = "expired", "Expired"
    INVALID = "invalid", "Invalid"
    CANCELLED = "cancelled", "Cancelled"


class PaymentSubStatus(models.TextChoices):
    NONE = "", "None"
    PAID_PARTIAL = "paid_partial", "Paid partially"
    PAID_OVER = "paid_over", "Paid over"
    PAID_LATE = "paid_late", "Paid late"
    MARKED = "marked", "Marked by an operator"


S = PaymentStatus

# from-status -> the statuses it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    # Paid in full (unconfirmed) / expired unpaid / cancelled by the merchant.
    S.PENDING: frozenset({S.PROCESSING, S.EXPIRED, S.CANCELLED}),
    # Confirmed / unconfirmed past monitoring or double spent / replaced and underpaid again.
    S.PROCESSING: frozenset({S.SETTLED, S.INVALID, S.PENDING}),
    # A reorg took its confirmations away / an operator marks it invalid (refund outside).
    S.SETTLED: frozenset({S.PROCESSING, S.INVALID}),
    # Paid before expiry but noticed after it (node outage) / an operator marks it.
    S.EXPIRED: frozenset({S.PROCESSING, S.SETTLED, S.INVALID}),
    S.INVALID: frozenset({S.SETTLED}),
    S.CANCELLED: frozenset(),
}

# Moves only an operator may make; the sub-status becomes "marked".
OPERATOR_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (S.SETTLED, S.INVALID),
        (S.EXPIRED, S.SETTLED),
        (S.EXPIRED, S.INVALID),
        (S.INVALID, S.SETTLED),
    }
)

FINAL_STATUSES: frozenset[str] = frozenset({S.SETTLED, S.INVALID, S.CANCELLED})


def is_allowed(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS[from_status]
