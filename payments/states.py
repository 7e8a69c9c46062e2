"""The payment state machine, declared in one place.

Statuses and transitions follow BTCPay Server's invoice model, with
``cancelled`` added for merchants. Sub-statuses qualify a status without changing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

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


# --- where a payment's money leads it ------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One transaction paying the payment (dropped ones excluded), as the state machine sees it."""

    amount: int  # base units
    confirmations: int
    replaceable: bool  # signals replace-by-fee
    first_seen_at: datetime | None
    mined_at: datetime | None


@dataclass(frozen=True)
class Policy:
    """What the payment asks for and the rules it was created under."""

    amount_due: int  # base units
    underpayment_tolerance_percent: Decimal
    required_confirmations: int
    expires_at: datetime


@dataclass(frozen=True)
class Step:
    """One transition: the status and sub-status to move to, and why."""

    status: str
    sub_status: str
    reason: str


@dataclass(frozen=True)
class Evaluation:
    amount_received: int
    amount_confirmed: int
    steps: tuple[Step, ...]  # in order; empty when the payment stays where it is


def paid_threshold(policy: Policy) -> int:
    """Base units that count as paid in full under the underpayment tolerance."""
    tolerance = policy.underpayment_tolerance_percent
    return math.ceil(policy.amount_due * (Decimal(100) - tolerance) / Decimal(100))


def _confirmed(tx: Received, required: int) -> bool:
    # 0-conf is never enough for a transaction that signals replace-by-fee.
    return tx.confirmations >= max(required, 1) or (
        tx.confirmations >= required and not tx.replaceable
    )


def _on_time(tx: Received, expires_at: datetime) -> bool:
    """Seen or mined by the expiry, by the chain's evidence."""
    times = [t for t in (tx.first_seen_at, tx.mined_at) if t is not None]
    return bool(times) and min(times) <= expires_at


def payment_evaluate(
    *,
    status: str,
    sub_status: str,
    received: Sequence[Received],
    policy: Policy,
    at: datetime,
) -> Evaluation:
    """The totals the transactions add up to, and the transitions from (status, sub_status) they
    lead to at ``at``. Pure: the service records the totals and applies the steps, one event each.
    A payment an operator marked keeps its status; its totals are still computed."""
    amount_received = sum(tx.amount for tx in received)
    amount_confirmed = sum(
        tx.amount for tx in received if _confirmed(tx, policy.required_confirmations)
    )
    threshold = paid_threshold(policy)
    paid_in_full = amount_received >= threshold
    confirmed_in_full = amount_confirmed >= threshold
    paid_before_expiry = (
        sum(tx.amount for tx in received if _on_time(tx, policy.expires_at)) >= threshold
    )
    over = (
        PaymentSubStatus.PAID_OVER if amount_received > policy.amount_due else PaymentSubStatus.NONE
    )
    partial = PaymentSubStatus.PAID_PARTIAL if amount_received > 0 else PaymentSubStatus.NONE

    steps: list[Step] = []
    now = Step(status, sub_status, "")

    def move(to_status: str, to_sub_status: str, reason: str) -> None:
        nonlocal now
        if (to_status, to_sub_status) != (now.status, now.sub_status):
            now = Step(to_status, to_sub_status, reason)
            steps.append(now)

    def done() -> Evaluation:
        return Evaluation(amount_received, amount_confirmed, tuple(steps))

    if sub_status == PaymentSubStatus.MARKED:
        return done()  # an operator decided
    if status == S.PENDING and paid_in_full and at > policy.expires_at and not paid_before_expiry:
        # Paid after expiry by the chain's evidence (first seen and mined after it), whether or
        # not the expiry sweep has run yet (it waits for the watcher to look past the expiry):
        # the quote is not honoured; the merchant decides.
        move(S.EXPIRED, PaymentSubStatus.PAID_LATE, "paid after expiry")
        return done()
    if status == S.EXPIRED and paid_in_full and paid_before_expiry:
        # Paid before expiry but noticed after it (a node outage, a catch-up): on time.
        move(S.PROCESSING, over, "paid before expiry, noticed after it")
    if now.status == S.SETTLED and not confirmed_in_full:
        move(S.PROCESSING, over, "confirmations lost in a reorg")
    before = now.status
    if before == S.PENDING:
        if paid_in_full:
            move(S.PROCESSING, over, "paid in full")
        elif amount_received > 0 or now.sub_status:
            move(S.PENDING, partial, "payment amount changed")
    if now.status == S.PROCESSING:
        if not paid_in_full:
            move(S.PENDING, partial, "underpaid again")
        elif confirmed_in_full:
            move(S.SETTLED, over, "confirmed")
        else:
            move(S.PROCESSING, over, "payment amount changed")
    elif now.status == S.SETTLED and before == S.SETTLED:
        move(S.SETTLED, over, "payment amount changed")
    elif now.status in (S.EXPIRED, S.CANCELLED):
        if amount_received > 0:
            late = PaymentSubStatus.PAID_LATE if paid_in_full else PaymentSubStatus.PAID_PARTIAL
            move(now.status, late, "paid after the payment closed")
        else:
            move(now.status, PaymentSubStatus.NONE, "payment no longer counted")
    return done()
