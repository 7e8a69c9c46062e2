"""What the health endpoints tell whom: /health/live and /health/ready answer
anyone with their status and nothing else; /health and /health/external, and every check's
details, need the health token or a staff session. And a wrong Host header never gets Django's
debug page, even in embedded mode where DEBUG is on."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import staff_client

pytestmark = pytest.mark.django_db

TOKEN = "health-token-of-the-security-tests"
JSON: dict[str, Any] = {"HTTP_ACCEPT": "application/json"}


@pytest.fixture(autouse=True)
def _health_token(settings) -> None:
    settings.HEALTH_TOKEN = TOKEN


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
@pytest.mark.parametrize(
    "how", [JSON, {"HTTP_ACCEPT": "text/html"}, {"QUERY_STRING": "format=text"}], ids=str
)
def test_given_no_credentials_when_live_or_ready_is_asked_then_only_the_status(path, how):
    response = Client().get(path, **how)

    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}


@pytest.mark.parametrize("path", ["/health", "/health/external"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong token", "not bearer"],
)
def test_given_no_or_wrong_credentials_when_full_health_is_asked_then_401_in_the_error_shape(
    path, headers
):
    for query in ("", "?format=text", "?format=openmetrics"):
        response = Client(headers=headers).get(path + query, **JSON)

        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="health"'
        assert response.json()["error"]["code"] == "authentication_required"
        # resilience renders it through RESILIENCE_ERROR_RESPONSE: the API's type for a 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert b"database" not in response.content


def test_given_a_signed_in_user_who_is_not_staff_when_health_is_asked_then_401(
    django_user_model,
):
    client = Client()
    client.force_login(django_user_model.objects.create_user("buyer", password=None))

    assert client.get("/health", **JSON).status_code == 401


def test_given_the_health_token_when_health_is_asked_then_the_diagnostics():
    client = Client(headers={"Authorization": f"Bearer {TOKEN}"})

    body = client.get("/health", **JSON).json()
    ready = client.get("/health/ready", **JSON).json()

    assert body["checks"]["database"]["diagnostics"]["vendor"] == "postgresql"
    assert set(ready["checks"]) == {"database", "migrations", "redis:cache"}


def test_given_a_staff_session_when_health_is_asked_in_a_browser_then_the_page_renders():
    response = staff_client().get("/health", HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert b"DependencyCheck(name=&#x27;database&#x27;)" in response.content


@pytest.mark.parametrize("path", ["/", "/health/live", "/admin/", "/api/v1/payments"])
def test_given_embedded_debug_mode_when_a_request_names_another_host_then_400_without_debug_page(
    settings, path
):
    settings.DEBUG = True  # embedded mode's default

    response = Client(HTTP_HOST="attacker.example").get(path)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_host"
    assert b"DisallowedHost" not in response.content
    assert b"SECRET_KEY" not in response.content
