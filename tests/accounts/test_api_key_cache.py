"""A process's memory of API keys (accounts/api_key_cache.py): it saves the key's database read,
and never keeps a revoked key or changed scopes from the next request where Redis can say so."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import api_key_cache, services
from accounts.models import ApiKey, ApiKeyScope
from resilience import clock
from resilience.redis_client import fast_fail_client
from testing.nodes import free_port
from testing.servers import asgi_server
from tests.factories import ApiKeyFactory, MerchantFactory

READ = ApiKeyScope.PAYMENTS_READ.value
WRITE = ApiKeyScope.PAYMENTS_WRITE.value


def client_with(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def a_remembered_key(merchant) -> tuple[ApiKey, str, APIClient]:
    """A key of ``merchant`` (its secret, a client using it) that this process has authenticated
    once, so remembers."""
    api_key, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    client = client_with(secret)
    assert client.get("/api/v1/payments").status_code == 200
    return api_key, secret, client


def refused_as_revoked(response) -> bool:
    return response.status_code == 401 and response.json()["error"]["code"] == "api_key_revoked"


def key_reads(queries: CaptureQueriesContext) -> list[str]:
    return [query["sql"] for query in queries.captured_queries if "payments_apikey" in query["sql"]]


def revoked_unseen(api_key: ApiKey) -> None:
    """Revoke the key the way no process is told of: a change behind the services' back (another
    process that could not reach Redis)."""
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=clock.now())


@pytest.mark.django_db
def test_given_a_key_used_once_when_it_is_used_again_then_the_database_is_not_asked_for_it(
    merchant,
):
    _, _, client = a_remembered_key(merchant)

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/v1/payments")

    assert response.status_code == 200
    assert key_reads(queries) == []


@pytest.mark.django_db
def test_given_a_remembered_key_when_it_is_revoked_then_the_next_request_is_refused(merchant):
    api_key, _, client = a_remembered_key(merchant)

    services.api_key_revoke(api_key=api_key)
    response = client.get("/api/v1/payments")

    assert refused_as_revoked(response)


@pytest.mark.django_db
def test_given_a_remembered_key_when_a_wrong_secret_with_its_prefix_comes_then_it_is_refused(
    merchant,
):
    _, secret, _ = a_remembered_key(merchant)
    forged = secret[:-1] + ("a" if secret[-1] != "a" else "b")

    response = client_with(forged).get("/api/v1/payments")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def redis_unreachable(settings) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def epoch_lost(settings) -> None:
    fast_fail_client(settings.REDIS_URL, timeout=2).delete(api_key_cache.epoch_key())


@pytest.mark.django_db
@pytest.mark.parametrize("epoch_unread", [redis_unreachable, epoch_lost])
def test_given_no_epoch_to_read_when_a_remembered_key_was_revoked_unseen_then_the_database_refuses_it(
    merchant, settings, epoch_unread
):
    api_key, _, client = a_remembered_key(merchant)
    revoked_unseen(api_key)

    epoch_unread(settings)
    response = client.get("/api/v1/payments")

    assert refused_as_revoked(response)


@pytest.mark.django_db
def test_given_a_change_no_process_was_told_of_when_the_cache_time_has_passed_then_the_database_answers(
    merchant, frozen_clock
):
    api_key, _, client = a_remembered_key(merchant)
    revoked_unseen(api_key)

    # The one case the memory answers wrongly, and its bound: until the cache time has passed.
    frozen_clock.advance(settings.API_KEY_CACHE_TTL - timedelta(milliseconds=1))
    assert client.get("/api/v1/payments").status_code == 200
    frozen_clock.advance(timedelta(milliseconds=1))
    response = client.get("/api/v1/payments")

    assert refused_as_revoked(response)


@pytest.mark.django_db
def test_given_the_memory_turned_off_when_a_key_is_used_again_then_the_database_is_asked(
    merchant, settings
):
    settings.API_KEY_CACHE_TTL = timedelta(0)
    _, _, client = a_remembered_key(merchant)

    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/payments").status_code == 200

    assert len(key_reads(queries)) == 1


@pytest.mark.django_db(transaction=True)
def test_given_a_server_remembering_a_key_when_this_process_changes_it_then_the_server_sees_it_on_the_next_request(
    tmp_path,
):
    # Given: a real server process that has served the key (so remembers it).
    merchant = MerchantFactory.create()
    api_key, secret = ApiKeyFactory.create_with_secret(merchant=merchant, scopes=[READ, WRITE])
    body = {"amount": "5.00", "crypto_currency": "BTC"}
    with asgi_server(tmp_path, env={"CRYPTOPAY_DEV_CHAIN": "1"}) as server:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        ) as http:
            assert http.get("/api/v1/payments").status_code == 200
            assert http.post("/api/v1/payments", json=body).status_code == 201

            # When: another process (this one) takes its write scope away, as the admin does.
            api_key.scopes = [READ]
            api_key.save()
            narrowed = http.post("/api/v1/payments", json=body)
            # And: revokes it.
            services.api_key_revoke(api_key=api_key)
            revoked = http.get("/api/v1/payments")

    # Then: the server's next request saw each change.
    assert narrowed.status_code == 403
    assert narrowed.json()["error"]["code"] == "insufficient_scope"
    assert refused_as_revoked(revoked)


@pytest.mark.django_db
def test_given_redis_lost_the_epoch_when_the_key_is_used_again_then_it_is_remembered_only_under_a_token_read_first(
    merchant,
):
    _, _, client = a_remembered_key(merchant)
    fast_fail_client(settings.REDIS_URL, timeout=2).delete(api_key_cache.epoch_key())

    reads = []
    for _ in range(3):
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/v1/payments").status_code == 200
        reads.append(len(key_reads(queries)))

    # The first sets a token but keeps nothing (its row was read under none); the second reads
    # that token before the database and keeps its row; the third needs no read.
    assert reads == [1, 1, 0]
