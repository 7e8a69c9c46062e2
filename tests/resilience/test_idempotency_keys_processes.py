"""What an idempotency key means, across two real daphne processes sharing PostgreSQL and Redis.

A key is the client's statement "this is the same request". Without one, only a body that names
its business object (``order_id``) is recognised as a retry; identical bodies without it are two
customers and each gets its own payment. Webhook endpoints (no ``order_id``) are never merged.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from django.test import Client

from accounts.models import Merchant
from payments.models import Payment
from resilience import idempotency
from resilience.models import IdempotencyKey
from testing.servers import asgi_server
from tests.conftest import ALL_SCOPES
from tests.factories import ApiKeyFactory, MerchantFactory

pytestmark = pytest.mark.django_db(transaction=True)

SOFA = {"amount": "25.00", "crypto_currency": "LTC", "description": "one sofa"}
SERVER_ENV = {"CRYPTOPAY_DEV_CHAIN": "1"}


def merchant_secret() -> tuple[Merchant, str]:
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant, scopes=ALL_SCOPES)
    return merchant, secret


def together(*calls):
    """Run the calls at the same moment, each from its own thread; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # asserted on by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def poster(base_url: str, secret: str, path: str, body: dict):
    client = httpx.Client(
        base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
    )
    client.get("/api/v1/payments", params={"limit": 1})  # connected before the race

    def post() -> httpx.Response:
        try:
            return client.post(path, json=body)
        finally:
            client.close()

    return post


def test_given_two_customers_order_the_same_thing_without_a_key_on_two_processes_then_each_gets_a_payment(
    tmp_path,
):
    merchant, secret = merchant_secret()

    with asgi_server(tmp_path, env=SERVER_ENV) as a, asgi_server(tmp_path, env=SERVER_ENV) as b:
        first, second = together(
            poster(a.base_url, secret, "/api/v1/payments", SOFA),
            poster(b.base_url, secret, "/api/v1/payments", SOFA),
        )

    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert (
        "Idempotent-Replayed" not in first.headers and "Idempotent-Replayed" not in second.headers
    )
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["deposit_address"] != second.json()["deposit_address"]
    assert Payment.objects.filter(merchant=merchant).count() == 2
    assert not IdempotencyKey.objects.filter(owner=merchant.public_id).exists()


def test_given_one_order_id_sent_without_a_key_to_two_processes_then_one_payment_is_made(
    tmp_path,
):
    merchant, secret = merchant_secret()
    order = {**SOFA, "order_id": "order-77"}

    with asgi_server(tmp_path, env=SERVER_ENV) as a, asgi_server(tmp_path, env=SERVER_ENV) as b:
        answers = together(
            poster(a.base_url, secret, "/api/v1/payments", order),
            poster(b.base_url, secret, "/api/v1/payments", order),
        )
        with httpx.Client(base_url=b.base_url, timeout=30) as client:
            retry = client.post(
                "/api/v1/payments", json=order, headers={"Authorization": f"Bearer {secret}"}
            )

    executed = [
        r for r in answers if r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    ]
    assert len(executed) == 1, [(r.status_code, r.text) for r in answers]
    for other in answers:
        if other is not executed[0]:
            assert (other.status_code == 201 and other.content == executed[0].content) or (
                other.status_code == 409
                and other.json()["error"]["code"] == "idempotency_key_in_use"
                and other.headers.get("Retry-After")
            ), other.text
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.content == executed[0].content
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_given_a_webhook_endpoint_deleted_when_it_is_created_again_without_a_key_then_a_new_one_is_made(
    tmp_path,
):
    _, secret = merchant_secret()
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["payment.created"]}

    with asgi_server(tmp_path, env=SERVER_ENV) as a, asgi_server(tmp_path, env=SERVER_ENV) as b:
        with httpx.Client(base_url=a.base_url, timeout=30, headers=auth) as on_a:
            created = on_a.post("/api/v1/webhook-endpoints", json=body)
            assert created.status_code == 201, created.text
        with httpx.Client(base_url=b.base_url, timeout=30, headers=auth) as on_b:
            deleted = on_b.delete(f"/api/v1/webhook-endpoints/{created.json()['id']}")
        with httpx.Client(base_url=a.base_url, timeout=30, headers=auth) as on_a:
            again = on_a.post("/api/v1/webhook-endpoints", json=body)
            listed = on_a.get("/api/v1/webhook-endpoints").json()

    assert (created.status_code, deleted.status_code, again.status_code) == (201, 204, 201), (
        created.text
    )
    assert "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != created.json()["id"]
    assert again.json()["secret"] != created.json()["secret"]
    assert [e["id"] for e in listed["data"]] == [again.json()["id"]]
    assert json.loads(again.content)["url"] == body["url"]


def test_given_a_keyed_webhook_endpoint_creation_and_rotation_when_retried_on_another_process_then_the_replay_carries_the_secret_that_is_never_stored_in_the_clear(
    tmp_path, django_user_model
):
    merchant, secret = merchant_secret()
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["payment.created"]}

    with asgi_server(tmp_path, env=SERVER_ENV) as a, asgi_server(tmp_path, env=SERVER_ENV) as b:
        on_a = httpx.Client(base_url=a.base_url, timeout=30, headers=auth)
        on_b = httpx.Client(base_url=b.base_url, timeout=30, headers=auth)
        with on_a, on_b:
            created = on_a.post(
                "/api/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "ep-1"}
            )
            created_again = on_b.post(
                "/api/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "ep-1"}
            )
            rotate = f"/api/v1/webhook-endpoints/{created.json()['id']}/rotate-secret"
            rotated = on_a.post(rotate, headers={"Idempotency-Key": "rot-1"})
            rotated_again = on_b.post(rotate, headers={"Idempotency-Key": "rot-1"})

    assert (created.status_code, rotated.status_code) == (201, 200)
    assert created_again.headers.get("Idempotent-Replayed") == "true"
    assert rotated_again.headers.get("Idempotent-Replayed") == "true"
    assert created_again.content == created.content
    assert rotated_again.content == rotated.content
    secrets = [created.json()["secret"], rotated.json()["secret"]]
    assert secrets[0] != secrets[1]

    gate = idempotency.default_gate()
    cache = gate._redis
    assert cache is not None  # these tests run against Redis
    admin = Client()
    admin.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", None))
    for key, shown in zip(["ep-1", "rot-1"], secrets, strict=True):
        row = IdempotencyKey.objects.get(owner=merchant.public_id, key=key)
        cached = cache.get(gate._redis_key("response", merchant.public_id, key))
        page = admin.get(f"/admin/resilience/idempotencykey/{row.pk}/change/")
        assert row.response_sealed and row.response_body is not None
        assert shown.encode() not in bytes(row.response_body)
        assert cached is not None and shown.encode() not in cached
        assert page.status_code == 200
        assert shown not in page.content.decode()
        assert "sealed" in page.content.decode()
