"""Idempotency semantics (IETF draft + Stripe) on one process, real PostgreSQL and Redis."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.http import HttpResponse
from django.test import Client
from django.urls import path
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from accounts import services as account_services
from accounts.models import Merchant
from cryptopay import urls as project_urls
from payments import services
from payments.api.views import PaymentListCreateView
from payments.models import Payment
from resilience import idempotency
from resilience.idempotency import (
    IdempotencyGate,
    InvalidKey,
    idempotency_keys_cleanup,
    idempotent,
    parse_key,
)
from resilience.models import IdempotencyKey
from resilience.redis_client import fast_fail_client
from tests.conftest import api_client_for
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

URL = "/api/v1/payments"
BODY = {"amount": "10.00", "crypto_currency": "BTC"}


def post(api, body=None, key: str | None = "key-1", url: str = URL):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return api.post(url, body if body is not None else BODY, format="json", **headers)


@pytest.fixture(autouse=True)
def fresh_gate(settings):
    settings.IDEMPOTENCY_REDIS_PREFIX = f"test-idem-{id(settings)}"
    idempotency.default_gate.cache_clear()
    yield
    idempotency.default_gate.cache_clear()


# --- the header ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("8e03978e-40d5", "8e03978e-40d5"),
        ('"with \\"quotes\\" and \\\\"', 'with "quotes" and \\'),
        ("  padded  ", "padded"),
        ("x" * 255, "x" * 255),
    ],
)
def test_keys_are_read_as_structured_field_strings_or_bare(raw, key):
    assert parse_key(raw) == key


@pytest.mark.parametrize(
    "raw", ["", '""', "x" * 256, "caf\u00e9", '"unterminated', '"bad \\n escape"', "tab\tin"]
)
def test_invalid_keys_are_refused(raw):
    with pytest.raises(InvalidKey):
        parse_key(raw)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=255))
def test_any_printable_ascii_key_round_trips_through_the_sf_string_form(key):
    quoted = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if key:
        assert parse_key(quoted) == key


# --- through the API ----------------------------------------------------------------------------


def test_a_retry_replays_the_first_answer_byte_for_byte_and_creates_nothing(api, merchant):
    first = post(api)
    second = post(api)

    assert first.status_code == second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert second.content == first.content
    assert Payment.objects.filter(merchant=merchant).count() == 1
    assert IdempotencyKey.objects.get(key="key-1").replays == 1


def test_the_same_key_with_another_body_is_a_422(api, merchant):
    post(api)

    response = post(api, {**BODY, "amount": "11.00"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_the_same_key_on_another_endpoint_is_a_422(api, merchant):
    payment = make_payment(merchant=merchant)
    post(api, {}, url=f"{URL}/{payment.public_id}/cancel")

    response = post(api, {})

    assert response.status_code == 422


@pytest.mark.parametrize("raw", ["x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_a_400_and_nothing_is_created(api, merchant, raw):
    client = Client()
    response = client.post(
        URL,
        BODY,
        content_type="application/json",
        HTTP_AUTHORIZATION=api._credentials["HTTP_AUTHORIZATION"],
        HTTP_IDEMPOTENCY_KEY=raw,
    )

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_idempotency_key",
        "message": response.json()["error"]["message"],
        "param": "Idempotency-Key",
    }
    assert Payment.objects.count() == 0


def test_a_request_refused_by_validation_is_not_stored(api, merchant):
    refused = post(api, {**BODY, "amount": "-1"})

    accepted = post(api, BODY)

    assert refused.status_code == 400
    assert accepted.status_code == 201
    assert not accepted.has_header("Idempotent-Replayed")


def test_domain_refusals_after_execution_began_are_stored_and_replayed(api, merchant):
    post(api, {**BODY, "order_id": "A"}, key="first")
    refused = post(api, {**BODY, "order_id": "A"}, key="second")
    replayed = post(api, {**BODY, "order_id": "A"}, key="second")

    assert refused.status_code == replayed.status_code == 409
    assert replayed["Idempotent-Replayed"] == "true"


def test_two_merchants_may_use_the_same_key_independently(db):
    first, second = MerchantFactory(), MerchantFactory()

    a = post(api_client_for(first))
    b = post(api_client_for(second))

    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert not b.has_header("Idempotent-Replayed")


def test_an_expired_key_executes_again(api, merchant, frozen_clock, settings):
    post(api, {**BODY, "order_id": "one"})
    frozen_clock.advance(settings.IDEMPOTENCY_EXPIRY + timedelta(seconds=1))

    again = post(api, {**BODY, "order_id": "one"})

    assert again.status_code == 409  # executed again: the order id now exists
    assert again.json()["error"]["code"] == "order_id_already_exists"
    assert not again.has_header("Idempotent-Replayed")


def test_given_no_key_and_no_order_id_when_identical_bodies_arrive_then_each_executes(
    api, merchant
):
    first = post(api, key=None)
    second = post(api, key=None)

    assert first.status_code == second.status_code == 201
    assert not second.has_header("Idempotent-Replayed")
    assert first.json()["deposit_address"] != second.json()["deposit_address"]
    assert Payment.objects.filter(merchant=merchant).count() == 2
    assert not IdempotencyKey.objects.exists()


def test_given_no_key_but_an_order_id_when_the_body_is_retried_then_it_replays(api, merchant):
    first = post(api, {**BODY, "order_id": "A-1"}, key=None)
    second = post(api, {**BODY, "order_id": "A-1"}, key=None)
    other = post(api, {**BODY, "order_id": "A-2"}, key=None)

    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert other.status_code == 201 and not other.has_header("Idempotent-Replayed")
    assert Payment.objects.filter(merchant=merchant).count() == 2
    assert list(IdempotencyKey.objects.values_list("automatic", flat=True)) == [True, True]


def test_a_key_still_in_progress_gets_a_409_with_retry_after(api, merchant, frozen_clock):
    post(api)  # learn the fingerprint of BODY
    IdempotencyKey.objects.filter(key="key-1").update(
        status=IdempotencyKey.Status.IN_PROGRESS, locked_at=frozen_clock.now()
    )
    row = IdempotencyKey.objects.get(key="key-1")
    idempotency.default_gate().forget(row.owner, "key-1")

    response = post(api)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert response["Retry-After"] == "1"
    assert IdempotencyKey.objects.get(key="key-1").conflicts == 1


def test_an_abandoned_key_is_taken_over_after_its_lease(api, merchant, frozen_clock):
    post(api, {**BODY, "order_id": "x"})
    row = IdempotencyKey.objects.get(key="key-1")
    row.status, row.locked_at = IdempotencyKey.Status.IN_PROGRESS, frozen_clock.now()
    row.save()
    Payment.objects.all().delete()  # as if the first request died before committing
    idempotency.default_gate().forget(row.owner, "key-1")
    frozen_clock.advance(timedelta(seconds=91))

    response = post(api, {**BODY, "order_id": "x"})

    assert response.status_code == 201
    assert IdempotencyKey.objects.get(key="key-1").version == 4  # completed, taken over, completed
    assert Payment.objects.count() == 1


def test_a_take_over_based_on_a_stale_read_cannot_reset_a_completed_key(api, merchant):
    """A slow first request completes while a second one, having read the key as abandoned,
    tries to take it over: the fencing token makes the take-over miss, so nothing runs twice."""
    post(api)
    completed = IdempotencyKey.objects.get(key="key-1")
    stale = IdempotencyKey(
        pk=completed.pk, version=completed.version - 1, status="in_progress", locked_at=None
    )

    claimed = idempotency.default_gate()._take_over(stale, {"status": "in_progress"})

    assert claimed is None
    assert IdempotencyKey.objects.get(key="key-1").status == "completed"


def test_a_5xx_is_not_stored_and_the_retry_executes(api, merchant, settings):
    settings.RATES_ALLOW_STATIC_FALLBACK = False  # no live providers: 503 rate_unavailable

    failed = post(api)
    settings.RATES_ALLOW_STATIC_FALLBACK = True
    retried = post(api)

    assert failed.status_code == 503
    assert retried.status_code == 201
    assert not retried.has_header("Idempotent-Replayed")
    assert Payment.objects.count() == 1


class HalfWayFailure(APIView):
    """Creates a payment, then fails: the payment must roll back and the key be released."""

    fail = True

    @idempotent()
    def post(self, request):
        services.payment_create(
            merchant=request.user.merchant,
            fiat_amount=Decimal("5.00"),
            fiat_currency="USD",
            crypto_currency="LTC",
        )
        if HalfWayFailure.fail:
            raise RuntimeError("crash after the insert")
        return Response({"ok": True}, status=201)


@pytest.fixture
def halfway_urls(settings):
    settings.ROOT_URLCONF = type(
        "urlconf",
        (),
        {
            "urlpatterns": [
                path("api/v1/halfway", HalfWayFailure.as_view()),
                *project_urls.urlpatterns,
            ]
        },
    )


@pytest.mark.django_db(transaction=True)
def test_a_crash_after_the_insert_rolls_back_and_releases_the_key(halfway_urls):
    merchant = MerchantFactory()
    api = api_client_for(merchant)
    HalfWayFailure.fail = True
    try:
        crashed = post(api, {"n": 1}, url="/api/v1/halfway")
        assert Payment.objects.count() == 0
        assert not IdempotencyKey.objects.filter(key="key-1").exists()
        HalfWayFailure.fail = False
        retried = post(api, {"n": 1}, url="/api/v1/halfway")
        replayed = post(api, {"n": 1}, url="/api/v1/halfway")
    finally:
        HalfWayFailure.fail = True

    assert crashed.status_code == 500
    assert retried.status_code == 201
    assert replayed["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


def test_given_an_executed_request_then_redis_holds_no_copy_until_its_first_replay(
    api, merchant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = post(api)
    gate = idempotency.default_gate()
    owner = IdempotencyKey.objects.get(key="key-1").owner
    assert gate._cache_get(owner, "key-1") is None  # an execution costs Redis no write

    replayed = post(api)  # from the row, which copies it to Redis

    assert replayed.content == first.content
    assert gate._cache_get(owner, "key-1") is not None


def test_replays_come_from_redis_when_the_database_row_is_gone(
    api, merchant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = post(api)
    post(api)  # the first replay copies the answer to Redis
    IdempotencyKey.objects.all().delete()  # only the Redis copy is left

    second = post(api)

    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content


def test_with_redis_unreachable_the_database_still_decides(api, merchant, settings):
    gate = IdempotencyGate(
        expiry=settings.IDEMPOTENCY_EXPIRY,
        conflict_retry_delay=settings.IDEMPOTENCY_CONFLICT_RETRY_DELAY,
        lease=settings.IDEMPOTENCY_LEASE,
        redis_client=fast_fail_client("redis://127.0.0.1:1/0"),
    )
    idempotency.default_gate.cache_clear()
    original = idempotency.default_gate
    idempotency.default_gate = lambda: gate  # type: ignore[assignment]
    try:
        first, second = post(api), post(api)
    finally:
        idempotency.default_gate = original

    assert first.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


def test_cancellation_is_idempotent_too(api, merchant):
    payment = make_payment(merchant=merchant)

    first = post(api, {}, url=f"{URL}/{payment.public_id}/cancel")
    second = post(api, {}, url=f"{URL}/{payment.public_id}/cancel")

    assert first.status_code == 200
    assert second["Idempotent-Replayed"] == "true"


def test_cleanup_removes_expired_keys_from_both_stores(
    api, merchant, frozen_clock, django_capture_on_commit_callbacks, settings
):
    with django_capture_on_commit_callbacks(execute=True):
        post(api)
    post(api)  # the first replay copies the answer to Redis
    row = IdempotencyKey.objects.get(key="key-1")
    gate = idempotency.default_gate()
    assert gate._cache_get(row.owner, "key-1") is not None
    frozen_clock.advance(settings.IDEMPOTENCY_EXPIRY + timedelta(hours=1))

    deleted = idempotency_keys_cleanup()

    assert deleted == 1
    assert not IdempotencyKey.objects.exists()
    assert gate._cache_get(row.owner, "key-1") is None


# --- the middleware -----------------------------------------------------------------------------


def plain_create(request):
    from django.http import JsonResponse

    merchant = Merchant.objects.create(name="made by a plain view")
    return JsonResponse({"id": merchant.public_id}, status=201)


@pytest.fixture
def middleware_urls(settings):
    settings.IDEMPOTENCY_MIDDLEWARE_PATHS = ["^/api/v1/plain$"]
    settings.ROOT_URLCONF = type(
        "urlconf",
        (),
        {"urlpatterns": [path("api/v1/plain", plain_create), *project_urls.urlpatterns]},
    )


def test_the_middleware_makes_configured_paths_idempotent(middleware_urls, api, merchant):
    client = Client(HTTP_AUTHORIZATION=api._credentials["HTTP_AUTHORIZATION"])
    before = Merchant.objects.count()

    first = client.post(
        "/api/v1/plain", {"a": 1}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="m1"
    )
    second = client.post(
        "/api/v1/plain", {"a": 1}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="m1"
    )
    anonymous = Client().post(
        "/api/v1/plain", {"a": 1}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="m1"
    )

    assert first.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert anonymous.status_code == 201 and not anonymous.has_header("Idempotent-Replayed")
    assert Merchant.objects.count() == before + 2  # one for the merchant, one anonymous


def test_keys_are_written_in_the_same_transaction_as_the_payment(api, merchant):
    with transaction.atomic():
        post(api)
        assert IdempotencyKey.objects.get(key="key-1").status == "completed"
        assert Payment.objects.count() == 1
        transaction.set_rollback(True)

    assert not IdempotencyKey.objects.filter(key="key-1", status="completed").exists()
    assert Payment.objects.count() == 0


def test_given_a_slow_request_when_it_completes_then_the_row_and_the_redis_copy_expire_together(
    frozen_clock, settings, django_capture_on_commit_callbacks
):
    gate = idempotency.default_gate()

    def slow_execute() -> HttpResponse:
        frozen_clock.advance(timedelta(minutes=10))  # the request took ten minutes
        return HttpResponse(b"made", status=201)

    with django_capture_on_commit_callbacks(execute=True):
        gate.run(
            owner="o",
            key="slow",
            automatic=False,
            method="POST",
            path="/x",
            request_fingerprint="fp",
            execute=slow_execute,
        )
    # A replay: it copies the answer to Redis with the row's expiry.
    gate.run(
        owner="o",
        key="slow",
        automatic=False,
        method="POST",
        path="/x",
        request_fingerprint="fp",
        execute=slow_execute,
    )

    row = IdempotencyKey.objects.get(owner="o", key="slow")
    assert row.expires_at == row.completed_at + settings.IDEMPOTENCY_EXPIRY
    window_ms = settings.IDEMPOTENCY_EXPIRY // timedelta(milliseconds=1)
    assert gate._redis is not None
    redis_ms = gate._redis.pttl(gate._redis_key("response", "o", "slow"))
    assert window_ms - 1000 < redis_ms <= window_ms


def test_a_replay_the_cache_holds_is_answered_without_the_database(
    api, merchant, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with django_capture_on_commit_callbacks(execute=True):
        first = post(api)
    post(api)  # the first replay copies the answer to Redis

    with CaptureQueriesContext(connection) as queries:
        replayed = post(api)

    assert replayed["Idempotent-Replayed"] == "true"
    assert replayed.content == first.content
    # No validation, no pricing, no transaction, and the key remembered (accounts/api_key_cache.py).
    assert [q["sql"] for q in queries.captured_queries] == []


def test_a_cached_answer_is_never_replayed_to_another_merchant(
    db, django_capture_on_commit_callbacks
):
    first_merchant: Merchant = MerchantFactory.create()
    other_merchant: Merchant = MerchantFactory.create()
    first_api, other_api = api_client_for(first_merchant), api_client_for(other_merchant)
    with django_capture_on_commit_callbacks(execute=True):
        first = post(first_api)
    assert post(first_api)["Idempotent-Replayed"] == "true"  # now in Redis too

    with django_capture_on_commit_callbacks(execute=True):
        other = post(other_api)  # the same key and body, another merchant's API key
    other_replayed = post(other_api)

    assert other.status_code == 201
    assert not other.has_header("Idempotent-Replayed")
    assert other.json()["id"] != first.json()["id"]
    assert other_replayed.content == other.content
    assert Payment.objects.filter(merchant=other_merchant).count() == 1
    assert Payment.objects.filter(merchant=first_merchant).count() == 1


def test_a_cached_answer_of_another_body_is_a_422_before_validation(
    api, merchant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        post(api)
    post(api)

    reused = post(api, body={"amount": "not a number", "crypto_currency": "BTC"})

    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


# --- early replay: answered by the middleware, before the view ----------------------------------


class CountedPaymentsView(PaymentListCreateView):
    """The real payments view, counting how often a request reaches it."""

    dispatched = 0

    def dispatch(self, request, *args, **kwargs):
        CountedPaymentsView.dispatched += 1
        return super().dispatch(request, *args, **kwargs)


@pytest.fixture
def counted_urls(settings):
    CountedPaymentsView.dispatched = 0
    settings.ROOT_URLCONF = type(
        "urlconf",
        (),
        {
            "urlpatterns": [
                path("api/v1/payments", CountedPaymentsView.as_view()),
                *project_urls.urlpatterns,
            ]
        },
    )


def cached(api, body=None, key: str = "key-1"):
    """Executes the request, then replays it once: Redis then holds its answer."""
    first = post(api, body, key)
    assert post(api, body, key)["Idempotent-Replayed"] == "true"
    return first


def test_given_a_cached_answer_when_the_request_is_retried_then_the_view_does_not_run(
    counted_urls, api, merchant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = cached(api)
    reached = CountedPaymentsView.dispatched

    replayed = post(api)

    assert CountedPaymentsView.dispatched == reached
    assert replayed.status_code == first.status_code == 201
    assert replayed["Idempotent-Replayed"] == "true"
    assert replayed.content == first.content
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_given_a_cached_answer_when_a_key_without_the_write_scope_retries_then_it_is_403(
    counted_urls, api, merchant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        cached(api)
    reader = api_client_for(merchant, scopes=["payments:read"])
    assert reader.get(URL).status_code == 200  # this process now knows the key

    refused = post(reader)

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert not refused.has_header("Idempotent-Replayed")


def test_given_a_cached_answer_when_the_key_is_revoked_then_a_retry_is_401(
    counted_urls, merchant, django_capture_on_commit_callbacks
):
    api_key, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    with django_capture_on_commit_callbacks(execute=True):
        cached(api)

    account_services.api_key_revoke(api_key=api_key)
    refused = post(api)

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"


def test_given_a_cached_answer_with_a_number_when_retried_then_only_the_same_scale_replays(
    counted_urls, api, django_capture_on_commit_callbacks
):
    """The view reads 10.50 and 10.5 as different decimals (no float touches a number): the
    early replay reads numbers as it does, so the same body replays without the view and the
    other scale reaches it (a 422)."""

    def send(amount: str):
        body = f'{{"amount": {amount}, "crypto_currency": "BTC"}}'
        return api.post(URL, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k")

    with django_capture_on_commit_callbacks(execute=True):
        assert send("10.5").status_code == 201
    assert send("10.5")["Idempotent-Replayed"] == "true"
    reached = CountedPaymentsView.dispatched

    same = send("10.5")
    other_scale = send("10.50")

    assert same["Idempotent-Replayed"] == "true"
    assert other_scale.status_code == 422
    assert other_scale.json()["error"]["code"] == "idempotency_key_reused"
    assert CountedPaymentsView.dispatched == reached + 1  # only the other scale reached the view


def test_given_a_cached_answer_when_the_same_bytes_claim_another_charset_then_the_view_judges(
    counted_urls, api, django_capture_on_commit_callbacks
):
    """Bytes are text only in their charset: read as Latin-1, "café" in UTF-8 is "cafÃ©", another
    order than the cached one."""
    body = json.dumps({**BODY, "order_id": "caf\u00e9"}, ensure_ascii=False).encode()
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(2):
            api.post(URL, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k")
    reached = CountedPaymentsView.dispatched

    latin = api.post(
        URL, body, content_type="application/json; charset=latin-1", HTTP_IDEMPOTENCY_KEY="k"
    )

    assert CountedPaymentsView.dispatched == reached + 1
    assert latin.status_code == 422
    assert latin.json()["error"]["code"] == "idempotency_key_reused"
