"""Deeply nested JSON: every JSON write route refuses a body nested deeper than
API_JSON_MAX_DEPTH with a 400 in the API's error shape (before, ~1,000 levels raised RecursionError
in the decoder and answered 500). Brackets inside strings are text, not nesting."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as django_settings

from tests.conftest import api_client_for
from tests.security.test_cross_merchant import ROUTES, TEST_MODE_ONLY, Owner

pytestmark = pytest.mark.django_db

WRITES = [
    (route, method) for route in ROUTES for method in route.methods if method in ("post", "patch")
]


def nested(levels: int) -> str:
    """A payment body whose metadata nests ``levels`` objects: ``levels + 2`` deep in all."""
    return '{"metadata": ' + '{"a":' * levels + "{}" + "}" * levels + "}"


def assert_too_deep(response) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "json_too_deep"
    assert str(django_settings.API_JSON_MAX_DEPTH) in error["message"]


def test_the_write_routes_are_enumerated():
    assert {route.template for route, _ in WRITES} >= {
        "/api/v1/payments",
        "/api/v1/payments/{public_id}/cancel",
        "/api/v1/webhook-endpoints",
        "/api/v1/webhook-endpoints/{public_id}",
    }


@pytest.mark.parametrize("levels", [1_000, 10_000], ids=["1k", "10k"])
@pytest.mark.parametrize(("route", "method"), WRITES, ids=lambda x: str(x))
def test_given_a_deeply_nested_body_when_posted_to_a_write_route_then_it_is_a_400(
    route, method, levels
):
    livemode = route.template not in TEST_MODE_ONLY  # a live key never gets that far there
    owner = Owner.create(livemode=livemode)
    path = route.template.format(public_id=owner.id_for(route.collection))
    client = api_client_for(owner.payment.merchant, livemode=livemode)

    response = getattr(client, method)(path, nested(levels), content_type="application/json")

    assert_too_deep(response)


def test_given_a_deep_array_when_posted_then_it_is_a_400_not_a_500(api):
    body = "[" * 30_000 + "]" * 30_000

    assert_too_deep(api.post("/api/v1/payments", body, content_type="application/json"))


def test_given_nesting_at_the_limit_when_posted_then_the_parser_accepts_it(api, settings):
    settings.API_JSON_MAX_DEPTH = 5

    response = api.post("/api/v1/payments", nested(3), content_type="application/json")
    deeper = api.post("/api/v1/payments", nested(4), content_type="application/json")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] != "json_too_deep"  # the serializer's own refusal
    assert_too_deep(deeper)


def test_given_brackets_inside_strings_when_posted_then_they_are_not_nesting(api, settings):
    settings.API_JSON_MAX_DEPTH = 3
    text = '[[[[{{{{ \\" [[[[ \\\\'
    body = json.dumps({"amount": "5.00", "crypto_currency": "BTC", "description": text})

    response = api.post("/api/v1/payments", body, content_type="application/json")

    assert response.status_code == 201, response.content
    assert response.json()["description"] == text


def test_given_the_idempotency_middleware_on_a_path_when_a_deep_body_arrives_then_it_is_a_400(
    merchant, settings
):
    settings.IDEMPOTENCY_MIDDLEWARE_PATHS = [r"^/api/v1/payments$"]
    client = api_client_for(merchant)  # a new client builds its middleware with the setting

    response = client.post("/api/v1/payments", nested(5_000), content_type="application/json")

    assert_too_deep(response)
