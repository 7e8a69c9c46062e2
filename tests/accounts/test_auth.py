"""API keys: Bearer authentication, scopes, revocation, and merchant isolation (404)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey, ApiKeyScope
from payments.models import Payment
from tests.conftest import api_client_for
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

READ, WRITE = ApiKeyScope.PAYMENTS_READ.value, ApiKeyScope.PAYMENTS_WRITE.value
ENDPOINTS = [
    ("get", "/api/v1/payments", None),
    ("post", "/api/v1/payments", {"amount": "1.00", "crypto_currency": "BTC"}),
    ("get", "/api/v1/payments/{id}", None),
    ("post", "/api/v1/payments/{id}/cancel", None),
]


def call(client: APIClient, method: str, path: str, body, payment_id: str = "pay_x"):
    return getattr(client, method)(path.format(id=payment_id), body, format="json")


def error_code(response) -> str:
    return response.json()["error"]["code"]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_missing_key_is_401_with_a_bearer_challenge(method, path, body):
    response = call(APIClient(), method, path, body)

    assert response.status_code == 401
    assert error_code(response) == "authentication_required"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer cpk_" + "A" * 44,  # well-formed, unknown
        "Bearer nonsense",
        "Bearer " + "cpk_" + "A" * 43,  # wrong length
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer a b",
    ],
)
def test_invalid_keys_and_headers_are_401(header, merchant):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/payments")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_key_with_the_right_prefix_but_wrong_secret_is_401(merchant):
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    forged = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")

    response = client.get("/api/v1/payments")

    assert response.status_code == 401
    assert error_code(response) == "invalid_api_key"


def test_a_revoked_key_is_401(merchant):
    api_key, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    services.api_key_revoke(api_key=api_key)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    response = client.get("/api/v1/payments")

    assert response.status_code == 401
    assert error_code(response) == "api_key_revoked"


def test_the_secret_is_stored_only_as_a_hash_and_use_is_recorded(merchant):
    api_key, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert client.get("/api/v1/payments").status_code == 200

    stored = ApiKey.objects.get(pk=api_key.pk)
    assert stored.key_hash == services.api_key_hash(secret)
    assert secret not in {stored.prefix, stored.key_hash, stored.name}
    assert secret.startswith(stored.prefix)
    assert stored.last_used_at is not None


@pytest.mark.parametrize(
    ("scopes", "method", "path", "body"),
    [
        ([WRITE], "get", "/api/v1/payments", None),
        ([WRITE], "get", "/api/v1/payments/{id}", None),
        ([READ], "post", "/api/v1/payments", {"amount": "1.00", "crypto_currency": "BTC"}),
        ([READ], "post", "/api/v1/payments/{id}/cancel", None),
        ([ApiKeyScope.WEBHOOKS_MANAGE.value], "get", "/api/v1/payments", None),
    ],
)
def test_a_key_without_the_needed_scope_is_403_and_changes_nothing(
    merchant, scopes, method, path, body
):
    payment = make_payment(merchant=merchant)
    client = api_client_for(merchant, scopes=scopes)

    response = call(client, method, path, body, payment.public_id)

    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"
    assert Payment.objects.count() == 1
    payment.refresh_from_db()
    assert payment.status == "pending"


@pytest.mark.parametrize(("method", "path", "body"), [e for e in ENDPOINTS if "{id}" in e[1]])
def test_another_merchants_payment_is_404_on_every_endpoint(merchant, method, path, body):
    theirs = make_payment(merchant=MerchantFactory.create())
    client = api_client_for(merchant)

    response = call(client, method, path, body, theirs.public_id)

    assert response.status_code == 404
    assert error_code(response) == "not_found"
    theirs.refresh_from_db()
    assert theirs.status == "pending"


def test_another_merchants_payments_never_appear_in_lists_or_cursors(merchant):
    theirs = make_payment(merchant=MerchantFactory.create(), order_id="shared")
    mine = make_payment(merchant=merchant, order_id="shared")
    client = api_client_for(merchant)

    listed = client.get("/api/v1/payments", {"order_id": "shared"}).json()["data"]
    cursor = client.get("/api/v1/payments", {"starting_after": theirs.public_id})

    assert [p["id"] for p in listed] == [mine.public_id]
    assert cursor.status_code == 400


def test_unknown_scopes_cannot_be_granted(merchant):
    with pytest.raises(ValueError, match="unknown scopes"):
        services.api_key_create(merchant=merchant, name="x", scopes=["payments:everything"])


def test_given_a_known_key_when_a_create_carries_an_idempotency_key_then_it_is_authenticated_once(
    merchant, settings
):
    """The idempotency middleware authenticates a request that carries a key (to answer a
    cached replay early); the view's authentication takes that outcome: one Redis read and no
    key lookup in the database for the whole request."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from resilience.redis_client import fast_fail_client

    client = api_client_for(merchant)
    assert client.get("/api/v1/payments").status_code == 200  # this process now knows the key
    server = fast_fail_client(settings.REDIS_URL)

    def mget_calls() -> int:
        return int(server.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    before = mget_calls()
    with CaptureQueriesContext(connection) as queries:
        created = client.post(
            "/api/v1/payments",
            {"amount": "1.00", "crypto_currency": "BTC"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="once",
        )

    assert created.status_code == 201, created.content
    assert mget_calls() - before == 1
    assert not [q for q in queries.captured_queries if "accounts_apikey" in q["sql"]]
