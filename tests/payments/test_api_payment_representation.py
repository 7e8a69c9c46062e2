"""PaymentSerializer writes its JSON out by hand (payment_representation): it must be the bytes
DRF's walk over the declared fields gives, for every kind of payment a merchant can read."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIRequestFactory

from payments import services
from payments.api.serializers import PaymentSerializer
from payments.models import Payment
from payments.services import ObservedOutput, payment_apply_transaction
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/payments"


def rendered_both_ways(payment: Payment) -> tuple[bytes, bytes]:
    """(the written-out JSON, DRF's field-by-field JSON) of one payment, as the API renders it."""
    request = APIRequestFactory().get("/api/v1/payments/x", HTTP_HOST="testserver")
    serializer = PaymentSerializer(payment, context={"request": request})
    written = JSONRenderer().render(serializer.data)
    walked = JSONRenderer().render(
        serializers.ModelSerializer.to_representation(serializer, payment)
    )
    return written, walked


def pay(payment: Payment, *, amount: int, confirmations: int, txid: str = "1") -> None:
    payment_apply_transaction(
        payment=payment,
        output=ObservedOutput(
            chain="dev", txid="dev" + txid * 60, output_index=0, amount=amount,
            confirmations=confirmations,
        ),
    )  # fmt: skip


def created_payments(merchant) -> list[Payment]:
    """Payments in the states the API shows, through the API and the services a watcher uses."""
    live, test = api_client_for(merchant), api_client_for(merchant, livemode=False)
    single = live.post(URL, {"amount": "19.99", "crypto_currency": "LTC"}, format="json")
    detailed = live.post(
        URL,
        {
            "amount": "1234.5",
            "currency": "EUR",
            "crypto_currency": "ETH",
            "order_id": "order-ü-1",
            "description": 'Two "quoted" words & <markup>',
            "metadata": {"customer": "ö42", "empty": ""},
            "redirect_url": "https://shop.example.com/thanks?x=1&y=2",
            "cancel_url": "https://shop.example.com/cart",
        },
        format="json",
    )
    choice = live.post(
        URL, {"amount": "30.00", "accepted_currencies": ["BTC", "ETH"]}, format="json"
    )
    picked = live.post(
        URL, {"amount": "30.00", "accepted_currencies": ["BTC", "LTC"]}, format="json"
    )
    in_test_mode = test.post(URL, {"amount": "5", "crypto_currency": "BTC"}, format="json")
    test_choice = test.post(
        URL, {"amount": "7", "accepted_currencies": ["BTC", "USDC"]}, format="json"
    )
    bodies = [single, detailed, choice, picked, in_test_mode, test_choice]
    assert all(b.status_code == 201 for b in bodies), [b.content for b in bodies]
    payments = {b.json()["id"]: Payment.objects.get(public_id=b.json()["id"]) for b in bodies}
    by_id = list(payments.values())

    services.payment_select_currency(payment=by_id[3], crypto_currency="LTC")
    underpaid = Payment.objects.get(pk=by_id[1].pk)
    pay(underpaid, amount=5, confirmations=0)
    settled = Payment.objects.get(pk=by_id[4].pk)
    assert settled.crypto_amount is not None  # priced when created
    pay(settled, amount=settled.crypto_amount, confirmations=6, txid="2")
    cancelled = services.payment_cancel(payment=Payment.objects.get(pk=by_id[0].pk))
    return [
        *(Payment.objects.get(pk=p.pk) for p in by_id),  # as a read finds them
        cancelled,  # as a service returns it (an enum status, unsaved-looking fields)
        Payment.objects.get(pk=by_id[0].pk),
    ]


def test_given_every_kind_of_payment_then_the_written_json_is_drf_s_byte_for_byte(merchant):
    payments = created_payments(merchant)
    states = {(p.status, p.sub_status, p.livemode, bool(p.accepted_currencies)) for p in payments}
    assert len(states) >= 5, states  # really different states
    assert any(p.settled_at for p in payments) and any(p.amount_received for p in payments)

    for payment in payments:
        written, walked = rendered_both_ways(payment)

        assert written == walked, payment.public_id


def test_given_a_payment_of_the_factory_then_the_written_json_is_drf_s(merchant):
    payment = services.payment_create(
        merchant=merchant,
        fiat_amount=Decimal("0.01"),
        fiat_currency="USD",
        crypto_currency="USDT",
        metadata={},
        order_id=None,
    )

    written, walked = rendered_both_ways(payment)  # the instance creation returned

    assert written == walked


def test_given_a_read_through_the_api_then_it_answers_the_written_json(merchant):
    api = api_client_for(merchant)
    created = api.post(
        URL, {"amount": "30.00", "accepted_currencies": ["BTC", "ETH"]}, format="json"
    )

    read = api.get(f"{URL}/{created.json()['id']}", HTTP_HOST="testserver")

    assert read.status_code == 200
    request = APIRequestFactory().get("/", HTTP_HOST="testserver")
    payment = Payment.objects.get(public_id=created.json()["id"])
    serializer = PaymentSerializer(payment, context={"request": request})
    walked = serializers.ModelSerializer.to_representation(serializer, payment)
    assert read.content == JSONRenderer().render(walked)


def test_given_another_time_zone_active_then_the_written_json_is_still_drf_s(merchant):
    # The written JSON looks the current time zone up once per payment (DRF: per timestamp);
    # whichever zone is current, both write the timestamps in it.
    from django.utils import timezone

    payment = Payment.objects.get(pk=created_payments(merchant)[4].pk)  # settled: 7 timestamps
    in_utc, _ = rendered_both_ways(payment)

    with timezone.override("Asia/Kolkata"):
        written, walked = rendered_both_ways(payment)

    assert written == walked
    assert written != in_utc and b"+05:30" in written
    assert rendered_both_ways(payment)[0] == in_utc  # back in UTC once the zone is left
