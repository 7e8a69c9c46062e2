"""API key brute force: failed attempts are counted per client IP (in Redis, in this process while
Redis is unreachable); past the limit that IP gets 429 in the API's error shape with Retry-After,
whatever key it sends, until the window ends. Other addresses are not affected."""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from payments import services
from payments.models import ApiKey
from tests.conftest import api_client_for
from tests.factories import ApiKeyFactory
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.django_db

LIMIT = 3
WRONG = "Bearer cpk_" + "A" * 44  # well-formed, unknown


@pytest.fixture(autouse=True)
def _production_limit(settings, frozen_clock) -> None:
    """The window is fixed (a minute of the clock): frozen, so no test straddles two of them."""
    settings.API_AUTH_FAILURE_LIMIT = LIMIT
    settings.API_AUTH_FAILURE_WINDOW = timedelta(seconds=60)


@pytest.fixture
def ip() -> str:
    """An address of this test's own, so counts never leak between tests."""
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


def attempt(ip: str, authorization: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client.get("/api/v1/payments", REMOTE_ADDR=ip)


def fail(ip: str, times: int, authorization: str = WRONG) -> None:
    for _ in range(times):
        assert attempt(ip, authorization).status_code == 401


def assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60


def valid_key(merchant) -> str:
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    return f"Bearer {secret}"


def test_given_the_limit_of_failed_keys_from_one_ip_when_it_tries_again_then_it_gets_429(
    merchant, ip
):
    fail(ip, LIMIT)

    assert_throttled(attempt(ip, WRONG))
    assert_throttled(attempt(ip, valid_key(merchant)))  # even the right key: no oracle


def test_given_a_throttled_ip_when_another_ip_uses_a_valid_key_then_it_is_served(merchant, ip):
    fail(ip, LIMIT)

    response = attempt("192.0.2.77", valid_key(merchant))

    assert response.status_code == 200


def test_given_a_throttled_ip_when_the_window_ends_then_it_may_try_again(
    merchant, ip, frozen_clock
):
    fail(ip, LIMIT)
    assert_throttled(attempt(ip, WRONG))

    frozen_clock.advance(timedelta(seconds=60))

    assert attempt(ip, valid_key(merchant)).status_code == 200


def test_given_successful_requests_when_counting_then_only_failures_count(merchant, ip):
    key = valid_key(merchant)
    for _ in range(LIMIT * 3):
        assert attempt(ip, key).status_code == 200

    fail(ip, LIMIT - 1)

    assert attempt(ip, key).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    ["Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer a b", "revoked"],
    ids=["malformed-key", "other-scheme", "bad-header", "revoked-key"],
)
def test_given_any_kind_of_failed_authentication_when_repeated_then_it_counts(
    merchant, ip, authorization
):
    if authorization == "revoked":
        api_key, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
        services.api_key_revoke(api_key=api_key)
        authorization = f"Bearer {secret}"

    fail(ip, LIMIT, authorization)

    assert_throttled(attempt(ip, authorization))


def test_given_no_authorization_header_when_requests_repeat_then_they_are_401_not_counted(
    merchant, ip
):
    for _ in range(LIMIT * 2):
        assert APIClient().get("/api/v1/payments", REMOTE_ADDR=ip).status_code == 401

    assert attempt(ip, valid_key(merchant)).status_code == 200


def test_given_redis_is_down_when_keys_are_guessed_then_this_process_still_throttles(
    merchant, ip, settings
):
    target = urlparse(django_settings.REDIS_URL)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        settings.REDIS_URL = proxy.url("redis", target.path or "/0")
        proxy.down()

        fail(ip, LIMIT)

        assert_throttled(attempt(ip, valid_key(merchant)))


def test_given_a_throttled_ip_when_it_keeps_guessing_then_no_key_is_looked_up(
    merchant, ip, django_assert_num_queries
):
    fail(ip, LIMIT)
    client = api_client_for(merchant)
    client.credentials(HTTP_AUTHORIZATION=WRONG)

    with django_assert_num_queries(0):
        response = client.get("/api/v1/payments", REMOTE_ADDR=ip)

    assert_throttled(response)
    assert ApiKey.objects.filter(merchant=merchant).exists()
