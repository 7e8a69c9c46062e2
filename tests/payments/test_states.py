"""Where a payment's money leads it: ``states.payment_evaluate`` as a table of (status, what was
received, policy, time) -> totals and transitions. No database: it is a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from payments.states import (
    PaymentStatus,
    PaymentSubStatus,
    Policy,
    Received,
    Step,
    paid_threshold,
    payment_evaluate,
)

S, SUB = PaymentStatus, PaymentSubStatus
EXPIRES = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BEFORE, AFTER = EXPIRES - timedelta(minutes=5), EXPIRES + timedelta(minutes=5)
DUE = 100_000


def tx(amount: int = DUE, conf: int = 0, *, rbf: bool = False, seen=BEFORE, mined=None):
    return Received(amount, conf, rbf, seen, mined)


def policy(*, tolerance: str = "0", confirmations: int = 1) -> Policy:
    return Policy(DUE, Decimal(tolerance), confirmations, EXPIRES)


# (status, sub-status, received, policy, evaluated at) -> [(status, sub-status, reason), ...]
ROWS = {
    "nothing received stays pending": (S.PENDING, SUB.NONE, [], policy(), BEFORE, []),
    "partly paid": (
        S.PENDING, SUB.NONE, [tx(40_000)], policy(), BEFORE,
        [(S.PENDING, SUB.PAID_PARTIAL, "payment amount changed")],
    ),
    "paid in full, unconfirmed": (
        S.PENDING, SUB.NONE, [tx()], policy(), BEFORE,
        [(S.PROCESSING, SUB.NONE, "paid in full")],
    ),
    "paid in full and confirmed at once: two transitions": (
        S.PENDING, SUB.NONE, [tx(conf=1)], policy(), BEFORE,
        [(S.PROCESSING, SUB.NONE, "paid in full"), (S.SETTLED, SUB.NONE, "confirmed")],
    ),
    "overpaid and confirmed": (
        S.PENDING, SUB.NONE, [tx(DUE + 1, conf=1)], policy(), BEFORE,
        [(S.PROCESSING, SUB.PAID_OVER, "paid in full"), (S.SETTLED, SUB.PAID_OVER, "confirmed")],
    ),
    "two payments add up": (
        S.PENDING, SUB.PAID_PARTIAL, [tx(60_000), tx(40_000)], policy(), BEFORE,
        [(S.PROCESSING, SUB.NONE, "paid in full")],
    ),
    "within the tolerance counts as paid": (
        S.PENDING, SUB.NONE, [tx(99_000)], policy(tolerance="1"), BEFORE,
        [(S.PROCESSING, SUB.NONE, "paid in full")],
    ),
    "below the tolerance is partial": (
        S.PENDING, SUB.NONE, [tx(98_999)], policy(tolerance="1"), BEFORE,
        [(S.PENDING, SUB.PAID_PARTIAL, "payment amount changed")],
    ),
    "0-conf policy settles a final transaction": (
        S.PROCESSING, SUB.NONE, [tx(conf=0)], policy(confirmations=0), BEFORE,
        [(S.SETTLED, SUB.NONE, "confirmed")],
    ),
    "0-conf policy never settles a replaceable one": (
        S.PROCESSING, SUB.NONE, [tx(conf=0, rbf=True)], policy(confirmations=0), BEFORE, [],
    ),
    "short of the required confirmations stays processing": (
        S.PROCESSING, SUB.NONE, [tx(conf=1)], policy(confirmations=2), BEFORE, [],
    ),
    "replaced and underpaid again": (
        S.PROCESSING, SUB.NONE, [tx(30_000)], policy(), BEFORE,
        [(S.PENDING, SUB.PAID_PARTIAL, "underpaid again")],
    ),
    "reorg took the confirmations away": (
        S.SETTLED, SUB.NONE, [tx(conf=0)], policy(), AFTER,
        [(S.PROCESSING, SUB.NONE, "confirmations lost in a reorg")],
    ),
    "settled and paid more": (
        S.SETTLED, SUB.NONE, [tx(conf=3), tx(5, conf=1)], policy(), AFTER,
        [(S.SETTLED, SUB.PAID_OVER, "payment amount changed")],
    ),
    "paid after expiry, before the sweep ran": (
        S.PENDING, SUB.NONE, [tx(seen=AFTER)], policy(), AFTER,
        [(S.EXPIRED, SUB.PAID_LATE, "paid after expiry")],
    ),
    "paid before expiry, noticed after it": (
        S.PENDING, SUB.NONE, [tx(seen=AFTER, mined=BEFORE)], policy(), AFTER,
        [(S.PROCESSING, SUB.NONE, "paid in full")],
    ),
    "expired, then found paid on time": (
        S.EXPIRED, SUB.NONE, [tx(conf=1, seen=BEFORE)], policy(), AFTER,
        [
            (S.PROCESSING, SUB.NONE, "paid before expiry, noticed after it"),
            (S.SETTLED, SUB.NONE, "confirmed"),
        ],
    ),
    "expired and paid late": (
        S.EXPIRED, SUB.NONE, [tx(seen=AFTER)], policy(), AFTER,
        [(S.EXPIRED, SUB.PAID_LATE, "paid after the payment closed")],
    ),
    "expired and paid partly": (
        S.EXPIRED, SUB.NONE, [tx(10, seen=AFTER)], policy(), AFTER,
        [(S.EXPIRED, SUB.PAID_PARTIAL, "paid after the payment closed")],
    ),
    "cancelled, and its late payment dropped": (
        S.CANCELLED, SUB.PAID_LATE, [], policy(), AFTER,
        [(S.CANCELLED, SUB.NONE, "payment no longer counted")],
    ),
    "marked by an operator: nothing moves": (
        S.INVALID, SUB.MARKED, [tx(conf=6)], policy(), AFTER, [],
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "sub_status", "received", "rules", "at", "expected"),
    list(ROWS.values()),
    ids=list(ROWS),
)
def test_payment_evaluate_leads_the_payment_where_its_money_says(
    status, sub_status, received, rules, at, expected
):
    evaluation = payment_evaluate(
        status=status, sub_status=sub_status, received=received, policy=rules, at=at
    )
    assert evaluation.steps == tuple(Step(*step) for step in expected)
    assert evaluation.amount_received == sum(t.amount for t in received)


def test_totals_count_only_what_the_policy_calls_confirmed():
    received = [tx(10, conf=2), tx(20, conf=1), tx(40, conf=0), tx(80, conf=2, rbf=True)]
    evaluation = payment_evaluate(
        status=S.PENDING,
        sub_status=SUB.NONE,
        received=received,
        policy=policy(confirmations=2),
        at=BEFORE,
    )
    assert (evaluation.amount_received, evaluation.amount_confirmed) == (150, 90)


def test_the_paid_threshold_rounds_up_so_tolerance_never_gives_away_a_base_unit():
    assert paid_threshold(Policy(1_001, Decimal("0.5"), 1, EXPIRES)) == 996  # 995.995 rounds up
    assert paid_threshold(policy()) == DUE
