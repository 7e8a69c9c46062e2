"""Payments move through the state machine as the (development) chain reports outputs."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from payments import services
from payments.models import PaymentEvent, PaymentTransaction
from payments.services import ObservedOutput
from payments.states import PaymentStatus as S
from tests.factories import MerchantFactory, make_payment

pytestmark = pytest.mark.django_db


def pay(payment, amount: int, confirmations: int, txid: str = "tx1", index: int = 0) -> bool:
    return services.payment_apply_transaction(
        payment=payment,
        output=ObservedOutput(
            chain="dev", txid=txid, output_index=index, amount=amount, confirmations=confirmations
        ),
    )


def due(payment) -> int:
    """The payment's amount in base units (set at creation for a single-coin payment)."""
    assert payment.crypto_amount is not None
    return payment.crypto_amount


def event_types(payment) -> list[str]:
    return list(
        PaymentEvent.objects.filter(payment=payment)
        .order_by("sequence")
        .values_list("type", flat=True)
    )


def test_full_unconfirmed_payment_is_processing_then_settles_at_the_policy():
    payment = make_payment()  # medium speed policy: one confirmation

    pay(payment, due(payment), confirmations=0)
    assert (payment.status, payment.amount_received, payment.amount_confirmed) == (
        S.PROCESSING,
        payment.crypto_amount,
        0,
    )

    pay(payment, due(payment), confirmations=1)
    assert payment.status == S.SETTLED
    assert payment.amount_confirmed == payment.crypto_amount
    assert event_types(payment) == [
        "payment.created",
        "transaction.detected",
        "payment.status_changed",
        "payment.status_changed",
    ]


def test_replaying_the_same_output_is_recorded_once_and_writes_nothing():
    payment = make_payment()
    pay(payment, due(payment), confirmations=1)
    events = PaymentEvent.objects.filter(payment=payment).count()

    changed = pay(payment, due(payment), confirmations=1)

    assert changed is False
    assert PaymentTransaction.objects.filter(payment=payment).count() == 1
    assert PaymentEvent.objects.filter(payment=payment).count() == events


def test_partial_payment_stays_pending_with_paid_partial_and_completes_with_a_second_output():
    payment = make_payment()
    half = due(payment) // 2

    pay(payment, half, confirmations=1, txid="a")
    assert (payment.status, payment.sub_status) == (S.PENDING, "paid_partial")

    pay(payment, due(payment) - half, confirmations=1, txid="b")
    assert (payment.status, payment.sub_status) == (S.SETTLED, "")


def test_overpayment_is_settled_with_paid_over():
    payment = make_payment()

    pay(payment, due(payment) + 1, confirmations=1)

    assert (payment.status, payment.sub_status) == (S.SETTLED, "paid_over")


def test_underpayment_within_the_merchant_tolerance_counts_as_paid():
    merchant = MerchantFactory.create(underpayment_tolerance_percent=Decimal("1.00"))
    payment = make_payment(merchant=merchant)

    pay(payment, due(payment) * 99 // 100 + 1, confirmations=1)

    assert payment.status == S.SETTLED


def test_zero_confirmation_policy_settles_on_first_sight():
    merchant = MerchantFactory.create(speed_policy=0)
    payment = make_payment(merchant=merchant)

    pay(payment, due(payment), confirmations=0)

    assert payment.status == S.SETTLED


def test_payment_after_expiry_stays_expired_and_is_flagged_paid_late(frozen_clock):
    payment = make_payment()
    frozen_clock.advance(timedelta(minutes=16))
    services.payments_expire_due()
    payment.refresh_from_db()
    assert payment.status == S.EXPIRED

    pay(payment, due(payment), confirmations=6)

    assert (payment.status, payment.sub_status) == (S.EXPIRED, "paid_late")
    assert payment.amount_received == payment.crypto_amount


def test_expiry_sweep_expires_only_due_pending_payments_once(frozen_clock):
    due = make_payment()
    frozen_clock.advance(timedelta(minutes=10))
    not_yet = make_payment()
    frozen_clock.advance(timedelta(minutes=6))

    first = services.payments_expire_due()
    second = services.payments_expire_due()

    due.refresh_from_db()
    not_yet.refresh_from_db()
    assert (due.status, not_yet.status) == (S.EXPIRED, S.PENDING)
    assert first == {"expired": 1, "invalidated": 0}
    assert second == {"expired": 0, "invalidated": 0}
    assert event_types(due).count("payment.expired") == 1


def test_unconfirmed_payment_past_the_monitoring_window_becomes_invalid(frozen_clock):
    payment = make_payment()
    pay(payment, due(payment), confirmations=0)
    frozen_clock.advance(timedelta(minutes=15) + timedelta(hours=24))

    services.payments_expire_due()

    payment.refresh_from_db()
    assert payment.status == S.INVALID


def test_simulate_payment_command_pays_and_settles_a_payment():
    payment = make_payment()
    out = StringIO()

    call_command("simulate_payment", payment.public_id, stdout=out)

    payment.refresh_from_db()
    assert payment.status == S.SETTLED
    assert "settled" in out.getvalue()


def test_simulate_payment_command_can_pay_part_then_confirm_later():
    payment = make_payment(amount="60.00")  # 0.001 BTC at the fallback rate
    call_command(
        "simulate_payment",
        payment.public_id,
        "--amount",
        "0.001",
        "--confirmations",
        "0",
        stdout=StringIO(),
    )
    payment.refresh_from_db()
    assert payment.status == S.PROCESSING
    txid = PaymentTransaction.objects.get(payment=payment).txid

    call_command(
        "simulate_payment",
        payment.public_id,
        "--txid",
        txid,
        "--confirmations",
        "1",
        stdout=StringIO(),
    )

    payment.refresh_from_db()
    assert payment.status == S.SETTLED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pay_doesnotexist"], "No payment"),
        (["{id}", "--amount", "abc"], "not a number"),
        (["{id}", "--amount", "0.000000001"], "at most 8 decimals"),
        (["{id}", "--amount", "-1"], "positive"),
    ],
)
def test_simulate_payment_command_rejects_bad_input_clearly(args, message):
    payment = make_payment()
    args = [a.format(id=payment.public_id) for a in args]

    with pytest.raises(CommandError, match=message):
        call_command("simulate_payment", *args, stdout=StringIO())

    payment.refresh_from_db()
    assert payment.amount_received == 0


def test_simulate_payment_command_refuses_when_the_dev_chain_is_off(settings):
    payment = make_payment()
    settings.DEV_CHAIN_ENABLED = False

    with pytest.raises(CommandError, match="development chain is off"):
        call_command("simulate_payment", payment.public_id, stdout=StringIO())


def test_given_a_new_payment_then_its_outbox_event_is_written_with_it_and_queued_at_commit(
    django_capture_on_commit_callbacks, settings
):
    from notifications import queues
    from notifications.event_types import event_priority
    from notifications.models import Event

    with django_capture_on_commit_callbacks(execute=True):
        payment = make_payment(livemode=False, order_id="o-outbox")

    created = PaymentEvent.objects.get(payment=payment)
    outbox = Event.objects.get(subject=payment.public_id)
    assert (outbox.owner, outbox.type, outbox.sequence, outbox.livemode, outbox.priority) == (
        payment.merchant.public_id,
        "payment.created",
        1,
        False,
        event_priority("payment.created"),
    )
    assert outbox.data == created.data and outbox.created_at is not None
    if settings.REDIS_URL:  # embedded mode fans out at once instead of queueing
        assert outbox.pk in queues.queued_ids()
