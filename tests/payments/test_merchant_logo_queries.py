"""A merchant's logo (up to CRYPTOPAY_MERCHANT_LOGO_MAX_BYTES) is read only where it is shown:
it lives in its own table, which the API, the checkout page and the watcher's writes never
touch; the checkout page asks only whether there is one."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import MerchantLogo
from payments.services import ObservedOutput, payment_apply_transaction, payment_transactions_apply
from tests.conftest import api_client_for
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 199_000


LOGO_TABLE = MerchantLogo._meta.db_table


def logo_reads(queries: CaptureQueriesContext) -> list[str]:
    """Statements that read the logo's bytes."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if LOGO_TABLE in q["sql"] and re.search(r'"image"', q["sql"])
    ]


def logo_statements(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if LOGO_TABLE in q["sql"]]


@pytest.fixture
def payment(merchant):
    # Given a merchant with a logo of almost the largest allowed size
    MerchantLogo.objects.create(merchant=merchant, image=PNG, content_type="image/png")
    return make_payment(merchant=merchant, crypto_currency="BTC")


def test_given_a_merchant_with_a_logo_when_its_api_key_reads_a_payment_then_the_logo_is_not_read(
    merchant, payment
):
    api = api_client_for(merchant)

    with CaptureQueriesContext(connection) as queries:
        response = api.get(f"/api/v1/payments/{payment.public_id}")

    assert response.status_code == 200
    assert logo_statements(queries) == []


def test_given_a_merchant_with_a_logo_when_the_checkout_opens_then_only_the_logo_view_reads_it(
    payment,
):
    client = Client()
    token = {"token": payment.checkout_token}

    with CaptureQueriesContext(connection) as page_queries:
        page = client.get(f"/pay/{payment.public_id}/", token)
    with CaptureQueriesContext(connection) as logo_queries:
        logo = client.get(f"/pay/{payment.public_id}/logo", token)

    assert page.status_code == 200 and f"/pay/{payment.public_id}/logo?token=" in page.text
    assert logo_reads(page_queries) == [] and len(logo_statements(page_queries)) == 1
    assert logo.status_code == 200 and logo.content == PNG
    assert len(logo_reads(logo_queries)) == 1


def test_given_a_merchant_with_a_logo_when_the_watcher_records_payments_then_the_logo_is_not_read(
    merchant, payment
):
    second = make_payment(merchant=merchant, crypto_currency="BTC")

    def output(n: int) -> ObservedOutput:
        return ObservedOutput(
            chain="dev", txid=f"dev{n:061d}", output_index=0, amount=1000, confirmations=0
        )

    with CaptureQueriesContext(connection) as queries:
        payment_apply_transaction(payment=payment, output=output(1))
        payment_transactions_apply(observations=[(second.pk, output(2))])

    assert logo_statements(queries) == []
    assert payment.transactions.count() == 1 and second.transactions.count() == 1
