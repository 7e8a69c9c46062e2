"""JSON numbers for `amount` are accepted exactly as written (the README's promise), and a
validation error lists every problem in `errors`."""

from __future__ import annotations

from decimal import Decimal

import pytest

from payments.models import Payment

pytestmark = pytest.mark.django_db

URL = "/api/v1/payments"


def post_raw(api, body: str):  # type: ignore[no-untyped-def]
    return api.post(URL, data=body, content_type="application/json")


@pytest.mark.parametrize(
    ("number", "currency", "stored"),
    [
        ("19.99", "USD", "19.99"),
        ("1e2", "USD", "100.00"),
        ("0.30", "USD", "0.30"),
        ("9876543210.99", "EUR", "9876543210.99"),
        ("500", "EUR", "500.00"),
        ("7.5", "USD", "7.50"),
    ],
)
def test_given_a_json_number_amount_when_creating_then_it_is_stored_exactly(
    api, number, currency, stored, settings
):
    settings.PAYMENT_MAX_FIAT_AMOUNT = Decimal("10000000000")

    response = post_raw(
        api, f'{{"amount": {number}, "currency": "{currency}", "crypto_currency": "ETH"}}'
    )

    assert response.status_code == 201, response.json()
    assert response.json()["amount"] == stored
    assert Payment.objects.get(public_id=response.json()["id"]).fiat_amount == Decimal(stored)


@pytest.mark.parametrize(("number", "currency"), [("19.999", "USD"), ("0.1", "JPY")])
def test_given_a_json_number_with_more_decimals_than_the_currency_then_400_as_for_a_string(
    api, number, currency
):
    as_number = post_raw(
        api, f'{{"amount": {number}, "currency": "{currency}", "crypto_currency": "ETH"}}'
    )
    as_string = post_raw(
        api, f'{{"amount": "{number}", "currency": "{currency}", "crypto_currency": "ETH"}}'
    )

    assert as_number.status_code == as_string.status_code == 400
    assert as_number.json()["error"]["code"] == "invalid_amount_precision"
    assert as_number.json() == as_string.json()
    assert not Payment.objects.exists()


def test_given_two_invalid_fields_then_errors_lists_both_and_the_first_is_repeated_on_top(api):
    response = post_raw(api, '{"amount": "0", "crypto_currency": "XYZ"}')

    error = response.json()["error"]
    assert response.status_code == 400
    assert [(e["param"], e["code"]) for e in error["errors"]] == [
        ("amount", "not_positive"),
        ("crypto_currency", "invalid_choice"),
    ]
    first = error["errors"][0]
    assert (error["param"], error["code"], error["message"]) == (
        first["param"], first["code"], first["message"],
    )  # fmt: skip


def test_an_error_that_is_not_a_validation_error_has_no_errors_array(api):
    response = api.get(f"{URL}/pay_missing")

    assert response.status_code == 404
    assert "errors" not in response.json()["error"]
