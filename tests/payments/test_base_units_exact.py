"""Crypto amounts beyond 64 bits (wei) are stored, compared, summed and shown exactly, on
PostgreSQL and on SQLite (embedded mode): `make test` runs this file on both.

SQLite has no exact wide number type: in a NUMERIC column an integer beyond 64 bits becomes an
8-byte REAL with 15 significant digits, so these amounts are chosen to differ only in their last
digits.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client

from payments import services
from payments.checkout import qr_svg
from payments.currencies import crypto
from payments.models import Payment, PaymentTransaction
from payments.money import fiat_to_base_units, format_base_units
from payments.services import ObservedOutput
from payments.states import PaymentStatus as S
from payments.states import PaymentSubStatus
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

ETH = crypto("ETH")
BEYOND_64_BITS = 2**64


@pytest.fixture(autouse=True)
def _eth_at_a_static_rate(settings) -> None:
    # No configured chain: the ETH link is the plain EIP-681 one whatever the environment says.
    settings.CHAINS = {}
    settings.RATES_ALLOW_STATIC_FALLBACK = True


def pay(payment: Payment, amount: int, txid: str) -> None:
    services.payment_apply_transaction(
        payment=payment,
        output=ObservedOutput(
            chain="dev", txid=txid, output_index=0, amount=amount, confirmations=0
        ),
    )
    payment.refresh_from_db()


def test_given_an_eth_payment_of_a_million_usd_when_created_then_create_get_checkout_and_qr_carry_the_same_exact_integer(
    api,
):
    created = api.post(
        "/api/v1/payments", {"amount": "1000000.00", "crypto_currency": "ETH"}, format="json"
    )

    assert created.status_code == 201, created.content
    body = created.json()
    expected = fiat_to_base_units(
        fiat_amount=Decimal("1000000"), rate=Decimal(body["quote"]["rate"]), currency=ETH
    )
    assert expected > BEYOND_64_BITS and len(str(expected)) >= 21
    assert body["crypto_amount_base_units"] == str(expected)
    assert body["crypto_amount"] == format_base_units(amount=expected, currency=ETH)
    assert body["amount_due"] == body["crypto_amount"]

    fetched = api.get(f"/api/v1/payments/{body['id']}").json()
    assert fetched["crypto_amount_base_units"] == str(expected)
    assert (fetched["crypto_amount"], fetched["amount_due"]) == (
        body["crypto_amount"],
        body["amount_due"],
    )

    payment = Payment.objects.get(public_id=body["id"])
    assert payment.crypto_amount == expected
    # The stored value, not just what Python read back: it equals expected and not its neighbour.
    stored = Payment.objects.filter(pk=payment.pk)
    assert stored.filter(crypto_amount=expected).exists()
    assert not stored.filter(crypto_amount=expected - 1).exists()
    assert stored.filter(crypto_amount__gt=expected - 1, crypto_amount__lt=expected + 1).exists()

    link = f"ethereum:{payment.deposit_address}?value={expected}"
    page = Client().get(f"/pay/{payment.public_id}/", {"token": payment.checkout_token})
    assert page.status_code == 200
    html = page.content.decode()
    found = re.search(r'id="checkout-config"[^>]*>(.*?)</script>', html, re.S)
    assert found is not None
    config = json.loads(found.group(1))
    assert config["state"]["crypto_amount"] == body["crypto_amount"]
    assert config["state"]["amount_due"] == body["amount_due"]
    # Shown as people read it (no zeros past satoshi precision; none to trim here): still exact.
    assert (
        f'<span id="amount-due" data-field="amount_due" data-coin>{body["amount_due"]}</span>'
        in html
    )
    assert f'id="wallet-link" href="{link}"' in html

    qr = Client().get(f"/pay/{payment.public_id}/qr.svg", {"token": payment.checkout_token})
    assert qr.status_code == 200
    # The QR code is a pure function of its text: the served one encodes exactly this link.
    assert qr.content.decode() == qr_svg(link)


def test_given_a_wei_amount_when_paid_one_wei_short_then_partial_and_when_the_last_wei_arrives_then_paid_in_full():
    payment = make_payment(amount="1000000.00", crypto_currency="ETH")
    due = payment.priced_amount
    assert due > BEYOND_64_BITS

    pay(payment, due - 1, txid="dev" + "a" * 60)

    assert (payment.status, payment.sub_status) == (S.PENDING, PaymentSubStatus.PAID_PARTIAL)
    assert payment.amount_received == due - 1

    pay(payment, 1, txid="dev" + "b" * 60)

    assert payment.status == S.PROCESSING
    assert payment.sub_status == PaymentSubStatus.NONE  # exactly paid, not over
    assert payment.amount_received == due
    assert Payment.objects.filter(pk=payment.pk, amount_received=due).exists()


def test_given_two_transfers_beyond_64_bits_when_summed_then_the_total_is_exact():
    payment = make_payment(amount="1000000.00", crypto_currency="ETH")
    first, second = 10**20 + 1, 2 * 10**20 + 2

    pay(payment, first, txid="dev" + "c" * 60)
    pay(payment, second, txid="dev" + "d" * 60)

    assert payment.amount_received == first + second == 300000000000000000003
    assert sorted(PaymentTransaction.objects.values_list("amount", flat=True)) == [first, second]


def test_given_amounts_of_different_lengths_then_database_ordering_and_comparisons_are_numeric():
    amounts = [10**20 + 1, 9, 10**20, 10**19, 166667]
    payments = [make_payment(crypto_currency="ETH") for _ in amounts]
    for payment, amount in zip(payments, amounts, strict=True):
        Payment.objects.filter(pk=payment.pk).update(crypto_amount=amount)
    mine = Payment.objects.filter(pk__in=[p.pk for p in payments])

    assert list(mine.order_by("crypto_amount").values_list("crypto_amount", flat=True)) == sorted(
        amounts
    )
    by_amount = mine.order_by("crypto_amount")
    assert list(
        by_amount.filter(crypto_amount__gt=10**20).values_list("crypto_amount", flat=True)
    ) == [10**20 + 1]
    assert list(
        by_amount.filter(crypto_amount__lte=10**19).values_list("crypto_amount", flat=True)
    ) == [
        9,
        166667,
        10**19,
    ]
    assert mine.filter(amount_received__gt=0).count() == 0


def test_given_a_zero_amount_then_the_positive_check_constraint_still_refuses_it():
    payment = make_payment(crypto_currency="ETH")

    with pytest.raises(IntegrityError), transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(crypto_amount=0)


def test_amounts_are_stored_in_an_exact_form_on_each_database():
    payment = make_payment(amount="1000000.00", crypto_currency="ETH")

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            # SQLite has no exact wide number type: fixed-width digits, so text order is numeric
            cursor.execute(
                "SELECT crypto_amount, typeof(crypto_amount) FROM payments_payment WHERE id = %s",
                [payment.pk],
            )
            raw, kind = cursor.fetchone()
            assert kind == "text"
            assert len(raw) == 78 and int(raw) == payment.crypto_amount
        else:
            cursor.execute(
                "SELECT crypto_amount::text, pg_typeof(crypto_amount)::text "
                "FROM payments_payment WHERE id = %s",
                [payment.pk],
            )
            raw, kind = cursor.fetchone()
            assert kind == "numeric"
            assert raw == str(payment.crypto_amount)
