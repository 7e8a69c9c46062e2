"""Everything under /api/ answers in the one error shape: no HTML, no traceback."""

from __future__ import annotations

import json

import pytest
from django import db
from django.urls import path
from rest_framework.views import APIView

from accounts.api_errors import api_exception_handler, status_error_response
from cryptopay import urls as project_urls
from payments.models import Payment
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert {"type", "code", "message", "param"} <= set(body["error"])
    assert body["error"]["code"] == code
    assert "Traceback" not in response.content.decode()
    return body["error"]


@pytest.fixture
def api(merchant):
    return api_client_for(merchant)


def test_unknown_api_url_is_a_json_404(api):
    assert_error_shape(api.get("/api/v1/nothing-here"), 404, "not_found")


def test_unknown_payment_is_a_json_404(api):
    assert_error_shape(api.get("/api/v1/payments/pay_nope"), 404, "not_found")


def test_wrong_method_is_a_json_405_with_allow(api):
    response = api.delete("/api/v1/payments")

    assert_error_shape(response, 405, "method_not_allowed")
    assert "POST" in response["Allow"]


def test_malformed_json_is_a_400(api):
    response = api.post("/api/v1/payments", data="{not json", content_type="application/json")

    assert_error_shape(response, 400, "malformed_json")
    assert Payment.objects.count() == 0


def test_json_with_nan_is_malformed(api):
    response = api.post(
        "/api/v1/payments",
        data='{"amount": NaN, "crypto_currency": "BTC"}',
        content_type="application/json",
    )

    assert_error_shape(response, 400, "malformed_json")


def test_wrong_content_type_is_a_415(api):
    response = api.post("/api/v1/payments", data="amount=1", content_type="text/plain")

    assert_error_shape(response, 415, "unsupported_media_type")


def test_oversized_body_is_a_413_and_stores_nothing(api, settings):
    body = '{"amount": "1.00", "crypto_currency": "BTC", "description": "' + "x" * 70_000 + '"}'

    response = api.post("/api/v1/payments", data=body, content_type="application/json")

    assert_error_shape(response, 413, "payload_too_large")
    assert Payment.objects.count() == 0


def test_a_body_that_is_not_an_object_is_a_400(api):
    response = api.post("/api/v1/payments", data="[1, 2]", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


class Exploding(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request):
        raise RuntimeError("secret internal detail")


def plain_django_view(request):
    raise RuntimeError("secret internal detail")


@pytest.fixture
def exploding_urls(settings):
    urlconf = type(
        "urlconf",
        (),
        {
            "urlpatterns": [
                path("api/v1/explode", Exploding.as_view()),
                path("api/v1/explode-plain", plain_django_view),
                *project_urls.urlpatterns,
            ]
        },
    )
    settings.ROOT_URLCONF = urlconf
    return urlconf


@pytest.mark.parametrize("url", ["/api/v1/explode", "/api/v1/explode-plain"])
def test_an_unexpected_exception_is_a_json_500_without_details(client, exploding_urls, url):
    client.raise_request_exception = False

    response = client.get(url)

    error = assert_error_shape(response, 500, "internal_error")
    assert error["type"] == "api_error"
    assert "secret internal detail" not in response.content.decode()


def test_pages_outside_the_api_keep_their_html_errors(client):
    response = client.get("/not-api/")

    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("error", [db.OperationalError, db.InterfaceError])
def test_a_broken_database_connection_is_a_retryable_503_not_a_500(error):
    response = api_exception_handler(error("server closed the connection"), {"view": object()})

    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.data["error"]["code"] == "service_unavailable"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (409, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (503, "api_error"),
    ],
)
def test_an_error_rendered_from_its_status_gets_the_type_of_that_status(status, error_type):
    # The renderer resilience is given (RESILIENCE_ERROR_RESPONSE) knows only the status.
    response = status_error_response(status_code=status, code="some_code", message="Why.")

    assert response.status_code == status
    assert json.loads(response.content) == {
        "error": {"type": error_type, "code": "some_code", "message": "Why.", "param": None}
    }
