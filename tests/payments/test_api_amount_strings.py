"""A fiat amount given as a string is ASCII digits with at most one dot: what Python's Decimal()
also reads (other scripts' digits, a trailing newline, exponents, signs, spaces, underscores) is
refused with a 400 naming `amount`, and nothing is stored."""

from __future__ import annotations

import pytest

from notifications.models import Event
from payments.models import Payment

pytestmark = pytest.mark.django_db

URL = "/api/v1/payments"


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param("\u0661\u0660", id="arabic-indic-digits"),
        pytest.param("\u06f1\u06f0", id="extended-arabic-indic-digits"),
        pytest.param("\u0967\u0966", id="devanagari-digits"),
        pytest.param("\uff11\uff10.\uff15\uff10", id="fullwidth-digits"),
        pytest.param("10\n", id="trailing-newline"),
        pytest.param("\n10", id="leading-newline"),
        pytest.param("1e1", id="exponent"),
        pytest.param("1E1", id="capital-exponent"),
        pytest.param("+10", id="plus-sign"),
        pytest.param(" 10", id="leading-space"),
        pytest.param("10 ", id="trailing-space"),
        pytest.param("1 0", id="inner-space"),
        pytest.param("10\u00a0", id="no-break-space"),
        pytest.param("1_000", id="underscore"),
        pytest.param("10.5.0", id="two-dots"),
        pytest.param("10,50", id="comma"),
        pytest.param(".5", id="no-integer-part"),
        pytest.param("5.", id="no-fraction-digits"),
        pytest.param("", id="empty"),
        pytest.param("0x10", id="hexadecimal"),
    ],
)
def test_given_an_amount_string_that_is_not_ascii_digits_and_one_dot_when_creating_then_400_and_nothing_is_stored(
    api, amount
):
    events_before = Event.objects.count()

    response = api.post(URL, {"amount": amount, "crypto_currency": "BTC"}, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid",
        "amount",
    )
    assert error["message"]
    assert Payment.objects.count() == 0
    assert Event.objects.count() == events_before


@pytest.mark.parametrize(
    ("amount", "shown"), [("10", "10.00"), ("10.5", "10.50"), ("0.01", "0.01")]
)
def test_given_ascii_digits_with_at_most_one_dot_when_creating_then_the_payment_is_created(
    api, amount, shown
):
    response = api.post(URL, {"amount": amount, "crypto_currency": "BTC"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["amount"] == shown
