"""The admin reads like money: fiat at its exponent with the code, crypto in coin units with the
symbol and the exact base units on hover, rates without trailing zeros; the payments list is
narrow; payments and transactions export to CSV with the list's filters."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from payments import services
from payments.currencies import crypto
from payments.models import ExchangeRateEvent, Payment, PaymentTransaction
from payments.money import crypto_units, plain_decimal
from payments.states import PaymentStatus
from resilience import clock
from tests.factories import MerchantFactory, make_payment
from tests.payments import test_admin

pytestmark = pytest.mark.django_db

admin_client_ = test_admin.admin_client_  # a superuser's session


def with_crypto_amount(payment: Payment, base_units: int, rate: str) -> Payment:
    Payment.objects.filter(pk=payment.pk).update(crypto_amount=base_units, rate=Decimal(rate))
    payment.refresh_from_db()
    return payment


def add_transaction(payment: Payment, *, amount: int, txid: str) -> PaymentTransaction:
    return PaymentTransaction.objects.create(
        payment=payment, chain="bitcoin", txid=txid, output_index=0, amount=amount,
        confirmations=1, first_seen_at=clock.now(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("amount", "code", "shown"),
    [
        (81667, "BTC", "0.00081667"),
        (100000, "BTC", "0.00100000"),
        (12345 * 10**12, "ETH", "0.01234500"),
        (1, "ETH", "0.000000000000000001"),
        (49_000_000, "USDC", "49.000000"),
        (0, "LTC", "0.00000000"),
    ],
)
def test_crypto_units_are_exact_and_trim_zeros_beyond_satoshi_precision(amount, code, shown):
    assert crypto_units(amount=amount, currency=crypto(code)) == shown


@pytest.mark.parametrize(
    ("rate", "shown"),
    [("60000.000000000000000000", "60000"), ("0.000016500", "0.0000165"), ("49.10", "49.1")],
)
def test_rates_show_without_trailing_zeros(rate, shown):
    assert plain_decimal(Decimal(rate)) == shown


def test_given_a_payment_when_the_list_is_opened_then_amounts_read_like_money(admin_client_):
    payment = with_crypto_amount(
        make_payment(amount="49.00", currency="USD", crypto_currency="BTC"), 81667, "60000"
    )

    response = admin_client_.get(reverse("admin:payments_payment_changelist"))
    html = response.content.decode()

    assert response.status_code == 200
    assert "49.00 USD" in html
    assert '<span title="81667 base units">0.00081667 BTC</span>' in html
    assert response.context["cl"].list_display == [
        "action_checkbox", "public_id", "merchant_shown", "order_shown", "amount", "crypto_due",
        "status_shown", "created",
    ]  # fmt: skip
    assert payment.public_id in html


def test_given_a_payment_when_its_page_is_opened_then_money_and_rate_read_like_money(admin_client_):
    payment = with_crypto_amount(
        make_payment(amount="49.00", currency="USD", crypto_currency="BTC"), 81667, "60000.5"
    )

    html = admin_client_.get(reverse("admin:payments_payment_change", args=[payment.pk])).content
    html = html.decode()

    assert "49.00 USD" in html
    assert '<span title="81667 base units">0.00081667 BTC</span>' in html
    assert "60000.5 USD/BTC" in html
    assert "60000.500000000000000000" not in html
    assert 'name="rate"' not in html and 'name="fiat_amount"' not in html  # not editable


def test_given_a_rate_event_when_listed_then_its_rates_have_no_trailing_zeros(admin_client_):
    ExchangeRateEvent.objects.create(
        pair="BTC-USD", rate=Decimal("61000.25"), previous_rate=Decimal("60000"),
        fetched_at=clock.now(), created_at=clock.now(),
    )  # fmt: skip

    html = admin_client_.get(
        reverse("admin:payments_exchangerateevent_changelist")
    ).content.decode()

    assert ">61000.25<" in html and ">60000<" in html
    assert "61000.250000" not in html
    event = ExchangeRateEvent.objects.get()
    page = admin_client_.get(reverse("admin:payments_exchangerateevent_change", args=[event.pk]))
    assert 'name="rate"' not in page.content.decode()


def test_given_payments_when_exported_then_the_csv_has_the_filtered_rows_with_exact_amounts(
    admin_client_,
):
    kept = with_crypto_amount(
        make_payment(amount="49.00", crypto_currency="BTC", order_id="=HYPERLINK(1)"),
        81667,
        "60000",
    )
    services.payment_cancel(payment=kept)
    make_payment(amount="10.00", crypto_currency="BTC")  # pending: filtered out

    url = reverse("admin:payments_payment_export")
    response = admin_client_.get(f"{url}?status__exact={PaymentStatus.CANCELLED}")
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert [row["id"] for row in rows] == [kept.public_id]
    row = rows[0]
    assert (row["amount"], row["fiat_currency"], row["amount_text"]) == (
        "49.00",
        "USD",
        "49.00 USD",
    )
    assert (row["crypto_amount"], row["crypto_amount_base_units"]) == ("0.00081667", "81667")
    assert row["rate"] == "60000"
    assert row["status"] == "cancelled"
    assert not row["order_id"].startswith("=")  # a formula would run in a spreadsheet


def test_given_transactions_when_exported_then_the_csv_honours_the_search(admin_client_):
    payment = make_payment(amount="49.00", crypto_currency="BTC")
    add_transaction(payment, amount=81667, txid="a" * 64)
    add_transaction(payment, amount=5, txid="b" * 64)

    url = reverse("admin:payments_paymenttransaction_export")
    rows = list(
        csv.DictReader(
            io.StringIO(admin_client_.get(f"{url}?q={'a' * 64}").content.decode("utf-8-sig"))
        )
    )

    assert [(r["txid"], r["amount"], r["amount_base_units"]) for r in rows] == [
        ("a" * 64, "0.00081667", "81667")
    ]
    assert rows[0]["payment"] == payment.public_id


def test_given_staff_without_view_permission_when_exporting_then_refused(django_user_model):
    user = django_user_model.objects.create_user("clerk", password=None, is_staff=True)
    client = Client()
    client.force_login(user)

    response = client.get(reverse("admin:payments_payment_export"))
    user.user_permissions.add(Permission.objects.get(codename="view_payment"))
    allowed = Client()
    allowed.force_login(user)

    assert response.status_code == 403
    assert allowed.get(reverse("admin:payments_payment_export")).status_code == 200


def test_the_webhook_endpoint_form_offers_merchants_as_a_select_and_creates_for_the_chosen(
    admin_client_,
):
    merchant = MerchantFactory.create(name="Coffee shop")
    add = reverse("admin:notifications_webhookendpoint_add")

    page = admin_client_.get(add).content.decode()
    admin_client_.post(add, {"owner": merchant.public_id, "url": "http://127.0.0.1:9/hooks"})
    refused = admin_client_.post(add, {"owner": "mer_nobody", "url": "http://127.0.0.1:9/hooks"})

    assert '<select name="owner"' in page
    assert (
        f'<option value="{merchant.public_id}">Coffee shop ({merchant.public_id})</option>' in page
    )
    assert "mch_" not in page
    from notifications.models import WebhookEndpoint

    assert list(WebhookEndpoint.objects.values_list("owner", flat=True)) == [merchant.public_id]
    assert refused.status_code == 200  # the form again, with its error
    assert "Select a valid choice" in refused.content.decode()


def test_the_admin_index_names_webhook_deliveries_in_english(admin_client_):
    html = admin_client_.get(reverse("admin:index")).content.decode()

    assert "Webhook deliveries" in html
    assert "deliverys" not in html


def test_given_a_coin_choice_payment_not_yet_picked_when_exported_then_its_crypto_cells_are_empty(
    admin_client_,
):
    # Given: a payment the buyer has not picked a coin for (no crypto amount yet)
    payment = services.payment_create_with_choice(
        merchant=MerchantFactory.create(),
        fiat_amount=Decimal("12.00"),
        fiat_currency="USD",
        accepted_currencies=["BTC", "LTC"],
    )

    # When: the payments are exported
    response = admin_client_.get(reverse("admin:payments_payment_export"))
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))

    # Then: the row is there with its fiat amount, and no crypto figure is made up
    assert response.status_code == 200
    [row] = [row for row in rows if row["id"] == payment.public_id]
    assert row["amount"] == "12.00"
    assert (row["crypto_amount"], row["crypto_amount_base_units"]) == ("", "")
    assert row["amount_received"] == ""
