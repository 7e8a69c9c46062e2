"""API key brute force: failed attempts are counted per (client IP, key prefix) and per client IP
(in Redis, in this process while Redis is unreachable). Past the first limit that prefix gets 429
from that IP in the API's error shape with Retry-After, even with the right secret, until the
window ends; past the second that IP's failures get 429. A valid key is never refused for another
key's failures, so a stranger sharing an address (a proxy, a NAT) cannot lock merchants out.
Behind CRYPTOPAY_TRUSTED_PROXIES the client is read from X-Forwarded-For. Admin logins are
locked per (username, IP) by django-axes."""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey
from testing.faultproxy import FaultProxy
from tests.conftest import api_client_for
from tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

LIMIT = 3
IP_LIMIT = 6
WRONG = "Bearer cpk_" + "A" * 44  # well-formed, unknown


@pytest.fixture(autouse=True)
def _production_limit(settings, frozen_clock) -> None:
    """The window is fixed (a minute of the clock): frozen, so no test straddles two of them."""
    settings.API_AUTH_FAILURE_LIMIT = LIMIT
    settings.API_AUTH_IP_FAILURE_LIMIT = IP_LIMIT
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


def wrong_secret_for(authorization: str) -> str:
    """The same key prefix with another secret: a guess at that key."""
    last = authorization[-1]
    return authorization[:-1] + ("b" if last != "b" else "c")


def test_given_the_limit_of_failures_with_one_key_when_it_is_presented_again_then_it_gets_429(
    merchant, ip
):
    key = valid_key(merchant)
    fail(ip, LIMIT, wrong_secret_for(key))

    assert_throttled(attempt(ip, wrong_secret_for(key)))
    assert_throttled(attempt(ip, key))  # even the right secret: no oracle for the guesser


def test_given_many_bad_keys_from_one_ip_when_a_merchant_there_uses_a_valid_key_then_it_is_served(
    merchant, ip
):
    """One address shared by a stranger and merchants (a proxy, a NAT): the stranger's bad keys,
    past both limits, never refuse another merchant's valid key."""
    for n in range(IP_LIMIT + 2):
        attempt(ip, f"Bearer cpk_{n:012d}" + "x" * 32)
    for _ in range(LIMIT + 1):
        attempt(ip, WRONG)
    assert_throttled(attempt(ip, WRONG))

    response = attempt(ip, valid_key(merchant))

    assert response.status_code == 200, response.content


def test_given_the_ip_limit_of_failures_over_many_keys_when_another_bad_key_comes_then_429(
    merchant, ip
):
    for n in range(IP_LIMIT - 1):
        assert attempt(ip, f"Bearer cpk_{n:012d}" + "x" * 32).status_code == 401

    assert_throttled(attempt(ip, "Bearer cpk_" + "Z" * 44))  # the IP's limit-th failure
    assert_throttled(attempt(ip, "Bearer cpk_" + "Y" * 44))
    assert attempt(ip, valid_key(merchant)).status_code == 200


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


def test_given_failed_posts_with_an_idempotency_key_when_counting_then_each_counts_once(
    merchant, ip
):
    """The idempotency middleware authenticates such a request before its view does: a refused
    key is still counted once per request, not once per authentication."""
    key = valid_key(merchant)

    def create(authorization: str):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=authorization)
        body = {"amount": "10.00", "crypto_currency": "BTC"}
        return client.post(
            "/api/v1/payments", body, format="json", REMOTE_ADDR=ip, HTTP_IDEMPOTENCY_KEY="k"
        )

    for _ in range(LIMIT - 1):
        assert create(wrong_secret_for(key)).status_code == 401

    assert create(key).status_code == 201


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

        key = valid_key(merchant)
        fail(ip, LIMIT, wrong_secret_for(key))

        assert_throttled(attempt(ip, key))
        assert attempt(ip, valid_key(merchant)).status_code == 200  # another key is not held


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


PROXY = "10.0.0.5"


def attempt_via_proxy(forwarded_for: str, authorization: str, peer: str = PROXY):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client.get("/api/v1/payments", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded_for)


def test_given_trusted_proxies_when_clients_behind_them_fail_then_each_client_is_counted_apart(
    merchant, ip, settings
):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    other = "198.51.100.8"
    # A client may write anything into X-Forwarded-For; only the hops the proxies appended count.
    for _ in range(LIMIT):
        assert attempt_via_proxy(f"203.0.113.1, {ip}, 10.0.0.9", WRONG).status_code == 401

    assert_throttled(attempt_via_proxy(f"{ip}, 10.0.0.9", WRONG))
    assert attempt_via_proxy(other, WRONG).status_code == 401  # another client, same proxy
    assert attempt_via_proxy(ip, valid_key(merchant)).status_code == 200


def test_given_no_trusted_proxies_when_a_client_forges_x_forwarded_for_then_its_peer_is_counted(
    ip, settings
):
    settings.TRUSTED_PROXIES = []
    for n in range(LIMIT):
        assert attempt_via_proxy(f"198.51.100.{n}", WRONG, peer=ip).status_code == 401

    assert_throttled(attempt_via_proxy("198.51.100.99", WRONG, peer=ip))


# --- admin logins (django-axes) -----------------------------------------------------------------

PASSWORD = "correct horse battery staple"


def admin_login(ip: str, password: str):
    client = Client()
    response = client.post(
        reverse("admin:login"), {"username": "ops", "password": password}, REMOTE_ADDR=ip
    )
    return response, "_auth_user_id" in client.session


def test_given_failed_admin_logins_from_one_ip_when_the_right_password_comes_then_it_is_locked(
    django_user_model, ip, settings
):
    settings.AXES_FAILURE_LIMIT = 5
    django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    for _ in range(5):
        _, logged_in = admin_login(ip, "guess")
        assert not logged_in

    locked, logged_in = admin_login(ip, PASSWORD)
    elsewhere, logged_in_elsewhere = admin_login("192.0.2.200", PASSWORD)

    assert locked.status_code == 429
    assert not logged_in
    assert logged_in_elsewhere  # a stranger's guesses do not lock the operator out everywhere
    assert elsewhere.status_code == 302
