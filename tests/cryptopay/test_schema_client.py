"""The schema a real server serves is valid OpenAPI, and a client generated from it works.

The server is the production one (``manage.py serve``) on loopback. The client is generated at
test time by openapi-python-client from ``/api/schema/`` as served, into a temporary directory,
and drives a payment's life with an ``Idempotency-Key``. The docs page is loaded in Debian's
Chromium, which must make no request beyond the server itself.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from openapi_spec_validator import validate
from playwright.sync_api import sync_playwright

from testing.servers import Server, asgi_server
from tests.factories import ApiKeyFactory, MerchantFactory
from tests.payments.test_checkout_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.django_db(transaction=True)

WRITES = ("post", "put", "patch", "delete")
GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    # Payments need an address source: the development chain.
    with asgi_server(tmp_path, env={"CRYPTOPAY_DEV_CHAIN": "1"}) as server:
        yield server


@pytest.fixture
def served_schema(server) -> dict:
    response = httpx.get(f"{server.base_url}/api/schema/?format=json", timeout=10)
    assert response.status_code == 200
    return response.json()


def test_given_a_running_server_when_its_schema_is_validated_then_it_is_valid_openapi(
    served_schema,
):
    validate(served_schema)  # raises on the first violation


def test_every_write_operation_documents_the_idempotency_key_and_its_409_and_422(served_schema):
    writes = [
        (path, method, operation)
        for path, operations in served_schema["paths"].items()
        for method, operation in operations.items()
        if method in WRITES
    ]

    assert len(writes) >= 7  # create/cancel payment, redeliver, 4 webhook endpoint writes
    for path, method, operation in writes:
        headers = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
        assert headers == ["Idempotency-Key"], (method, path)
        assert "idempotency_key_in_use" in operation["responses"]["409"]["description"]
        assert "idempotency_key_reused" in operation["responses"]["422"]["description"]


def test_operations_are_tagged_per_resource_in_the_docs_order(served_schema):
    tags = {
        (path, method): operation["tags"]
        for path, operations in served_schema["paths"].items()
        for method, operation in operations.items()
    }

    assert [tag["name"] for tag in served_schema["tags"]] == [
        "Payments", "Rates", "Events", "Webhook endpoints",
    ]  # fmt: skip
    assert tags[("/api/v1/payments/{public_id}/cancel", "post")] == ["Payments"]
    assert tags[("/api/v1/rates", "get")] == ["Rates"]
    assert tags[("/api/v1/events/{public_id}/redeliver", "post")] == ["Events"]
    assert tags[("/api/v1/webhook-endpoints/{public_id}", "patch")] == ["Webhook endpoints"]
    assert all(len(t) == 1 for t in tags.values())


def _generated_client(server: Server, directory: Path):
    """openapi-python-client's package for the served schema, imported from ``directory``."""
    result = subprocess.run(
        [
            str(GENERATOR), "generate", "--url", f"{server.base_url}/api/schema/?format=json",
            "--meta", "none", "--output-path", str(directory / "cryptopay_client"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # every operation was generated
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module("cryptopay_client")
    finally:
        sys.path.remove(str(directory))


def test_a_generated_client_creates_fetches_lists_and_cancels_a_payment_with_an_idempotency_key(
    server, tmp_path
):
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    package = _generated_client(server, tmp_path)
    from cryptopay_client import AuthenticatedClient
    from cryptopay_client.api.payments import (
        payments_cancel,
        payments_create,
        payments_list,
        payments_retrieve,
    )
    from cryptopay_client.models import PaymentCreateRequest

    assert package.__file__.startswith(str(tmp_path))
    client = AuthenticatedClient(base_url=server.base_url, token=secret)
    key = str(uuid.uuid4())
    body = PaymentCreateRequest.from_dict({"amount": "49.00", "crypto_currency": "BTC"})

    created = payments_create.sync_detailed(client=client, body=body, idempotency_key=key)
    replayed = payments_create.sync_detailed(client=client, body=body, idempotency_key=key)
    other = PaymentCreateRequest.from_dict({"amount": "50.00", "crypto_currency": "BTC"})
    reused = payments_create.sync_detailed(client=client, body=other, idempotency_key=key)
    assert created.status_code == 201, created.content
    payment_id = created.parsed.id
    fetched = payments_retrieve.sync(client=client, public_id=payment_id)
    listed = payments_list.sync(client=client, limit=10)
    cancel_key = str(uuid.uuid4())
    cancelled = payments_cancel.sync(
        client=client, public_id=payment_id, idempotency_key=cancel_key
    )

    assert created.status_code == 201
    assert created.parsed.amount == "49.00" and created.parsed.crypto_currency == "BTC"
    assert replayed.status_code == 201 and replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.parsed.id == payment_id
    assert reused.status_code == 422
    assert reused.parsed.error.code == "idempotency_key_reused"
    assert fetched.id == payment_id
    assert [p.id for p in listed.data] == [payment_id]
    assert cancelled.status == "cancelled"


def test_the_docs_page_makes_no_request_beyond_the_server(server):
    """No web fonts or CDN scripts. Redoc's bundle still asks for its attribution logo at
    cdn.redoc.ly (unconditionally); the page's CSP (img-src 'self' data:) refuses it in the
    browser, so nothing leaves for another host: no such request gets an answer or even starts."""
    assert CHROMIUM.exists(), "make test installs Debian chromium (make browser)"
    requested: list[str] = []
    answered: list[str] = []
    refused: dict[str, str] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("response", lambda response: answered.append(response.url))
            page.on("requestfailed", lambda r: refused.__setitem__(r.url, r.failure or ""))
            page.goto(f"{server.base_url}/api/docs/", wait_until="networkidle")
            page.get_by_text("Create, fetch, list and cancel payments.").first.wait_for()
            page.wait_for_load_state("networkidle")
        finally:
            browser.close()

    def origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    elsewhere = [
        url for url in requested if url.startswith("http") and origin(url) != server.base_url
    ]
    assert {origin(url) for url in answered if url.startswith("http")} == {server.base_url}
    assert all(refused.get(url) == "csp" for url in elsewhere), refused  # blocked by our CSP
    assert not [url for url in elsewhere if "font" in url or url.endswith(".js")]
    assert any("/api/schema/" in url for url in requested)
