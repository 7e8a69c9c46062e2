"""What the schema fuzzer found, each pinned as a plain example: the 500s it provoked and the
places where the API accepted what its schema says is invalid."""

from __future__ import annotations

import pytest

from tests.conftest import api_client_for
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

DETAIL_ROUTES = [
    "/api/v1/payments/{}",
    "/api/v1/payments/{}/cancel",
    "/api/v1/webhook-endpoints/{}",
    "/api/v1/webhook-endpoints/{}/rotate-secret",
    "/api/v1/webhook-endpoints/{}/deliveries",
    "/api/v1/events/{}",
    "/api/v1/events/{}/redeliver",
]


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def post_json(api, path: str, text: str):
    return api.generic("POST", path, text, content_type="application/json")


# --- 500s ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", DETAIL_ROUTES)
@pytest.mark.parametrize("raw_id", ["pay_%00x", "we_%ED%A0%80", "evt_%C3%A9"])
def test_given_an_id_with_a_nul_or_non_ascii_when_requested_then_it_is_a_404_not_a_500(
    api, route, raw_id
):
    response = api.get(route.format(raw_id))

    assert response.status_code in (404, 405), response.content
    assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")


@pytest.mark.parametrize("key", ["a\\u0000b", "\\ud800", "x\\udfff"])
def test_given_a_metadata_key_postgres_cannot_store_when_creating_then_it_is_a_400_not_a_500(
    api, key
):
    body = '{"amount": "5", "crypto_currency": "BTC", "metadata": {"' + key + '": "x"}}'

    error = error_of(post_json(api, "/api/v1/payments", body), 400)

    assert (error["param"], error["code"]) == ("metadata", "invalid_metadata_key")


@pytest.mark.parametrize("amount", ["5.098290777420263e+307", '"1' + "0" * 40 + '"'])
def test_given_an_amount_beyond_the_decimal_context_when_creating_then_it_is_too_large_not_a_500(
    api, amount
):
    body = '{"amount": ' + amount + ', "crypto_currency": "LTC"}'

    error = error_of(post_json(api, "/api/v1/payments", body), 400)

    assert (error["param"], error["code"]) == ("amount", "amount_too_large")


# --- accepted although the schema says invalid --------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "/api/v1/payments?status=",
        "/api/v1/payments?starting_after=",
        "/api/v1/payments?limit=",
        "/api/v1/events?type=",
        "/api/v1/events?delivery_success=",
        "/api/v1/events?delivery_success=yes",
        "/api/v1/webhook-endpoints?starting_after=",
    ],
)
def test_given_an_empty_or_loose_query_value_when_listing_then_it_is_refused_not_ignored(
    api, query
):
    error = error_of(api.get(query), 400)

    assert error["param"] == query.split("?")[1].split("=")[0]


def test_given_a_control_character_as_a_filter_when_listing_then_it_filters_instead_of_blanking(
    api, merchant
):
    make_payment(merchant=merchant)

    response = api.get("/api/v1/events?subject=%1F")

    assert response.status_code == 200, response.content
    assert response.json()["data"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"amount": "5", "crypto_currency": "BTC", "metadata": {"k": 0}}', "metadata[k]"),
        ('{"amount": "5", "crypto_currency": "BTC", "description": 7}', "description"),
        ('{"amount": "5", "crypto_currency": "BTC", "order_id": 12}', "order_id"),
        ('{"amount": "1e3", "crypto_currency": "BTC"}', "amount"),
        ('{"amount": "5.", "crypto_currency": "BTC"}', "amount"),
        ('{"amount": "+5", "crypto_currency": "BTC"}', "amount"),
    ],
)
def test_given_a_value_of_the_wrong_json_type_when_creating_a_payment_then_it_is_refused(
    api, body, param
):
    error = error_of(post_json(api, "/api/v1/payments", body), 400)

    assert error["param"] == param


def test_given_zero_as_a_string_when_creating_a_payment_then_it_is_still_not_positive(api):
    error = error_of(
        post_json(api, "/api/v1/payments", '{"amount": "0", "crypto_currency": "BTC"}'), 400
    )

    assert error["code"] == "not_positive"


@pytest.mark.parametrize("enabled", ["0", "1", '"true"', '"on"'])
def test_given_a_non_boolean_enabled_when_creating_or_changing_an_endpoint_then_it_is_refused(
    merchant, enabled
):
    api = api_client_for(merchant)
    created = post_json(api, "/api/v1/webhook-endpoints", '{"url": "http://127.0.0.1:9/"}').json()

    create = post_json(
        api,
        "/api/v1/webhook-endpoints",
        '{"url": "http://127.0.0.1:9/", "enabled": ' + enabled + "}",
    )
    change = api.generic(
        "PATCH",
        f"/api/v1/webhook-endpoints/{created['id']}",
        '{"enabled": ' + enabled + "}",
        content_type="application/json",
    )

    assert error_of(create, 400)["param"] == "enabled"
    assert error_of(change, 400)["param"] == "enabled"
