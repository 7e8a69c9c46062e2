"""Concurrent creations on real PostgreSQL: fresh addresses and unique order ids hold."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from payments import services
from payments.errors import DuplicateOrderId
from payments.models import AddressIndex, MerchantWallet, Payment
from testing.servers import server_environment
from tests.factories import MerchantFactory
from tests.payments.chains.conftest import random_account_xpub

pytestmark = pytest.mark.django_db(transaction=True)


def run_concurrently(count: int, work) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def runner(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected and asserted on by the caller
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def create(merchant, order_id=None):
    return services.payment_create(
        merchant=merchant,
        fiat_amount=Decimal("10.00"),
        fiat_currency="USD",
        crypto_currency="LTC",
        order_id=order_id,
    )


def released_together(modules: list[list[str]]) -> list[dict]:
    """Start one process per ``[module, *args]``, wait until each says it is ready, release them
    at once, and return each one's answer (a JSON line): two processes racing for real."""
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", *module],
            cwd=Path(__file__).resolve().parents[2],
            env=server_environment({"CRYPTOPAY_DEV_CHAIN": "1"}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for module in modules
    ]
    pipes = [(client.stdin, client.stdout) for client in clients]
    try:
        for _, answers in pipes:
            assert answers is not None  # stdout=PIPE
            assert json.loads(answers.readline()) == {"ready": True}
        for orders, _ in pipes:
            assert orders is not None  # stdin=PIPE
            orders.write("go\n")
            orders.flush()
        return [json.loads(answers.readline()) for _, answers in pipes if answers is not None]
    finally:
        for client in clients:
            client.kill()
            client.wait()


def test_concurrent_creations_never_share_an_address_or_index():
    merchant = MerchantFactory.create()

    results = run_concurrently(8, lambda i: create(merchant))

    assert all(isinstance(r, Payment) for r in results), results
    payments = Payment.objects.filter(merchant=merchant)
    indexes = payments.values_list("derivation_index", flat=True)
    assert sorted(index for index in indexes if index is not None) == list(range(8))
    assert payments.values("deposit_address").distinct().count() == 8
    assert AddressIndex.objects.get(merchant=merchant, key_space="dev:LTC").next_index == 8


def test_concurrent_creations_with_one_order_id_make_exactly_one_payment():
    merchant = MerchantFactory.create()

    results = run_concurrently(6, lambda i: create(merchant, order_id="same-order"))

    created = [r for r in results if isinstance(r, Payment)]
    refused = [r for r in results if isinstance(r, DuplicateOrderId)]
    assert len(created) == 1
    assert len(refused) == 5
    assert Payment.objects.filter(merchant=merchant, order_id="same-order").count() == 1


def test_given_two_processes_allocating_at_once_then_no_index_is_handed_out_twice(settings):
    merchant = MerchantFactory.create()
    per_process = 40
    answers = [
        answer["indexes"]
        for answer in released_together(
            [["tests.payments.address_client", str(merchant.pk), str(per_process)]] * 2
        )
    ]

    handed_out = answers[0] + answers[1]
    assert sorted(handed_out) == list(range(2 * per_process))
    assert AddressIndex.objects.get(merchant=merchant, key_space="dev:LTC").next_index == 80


def test_a_create_costs_seven_statements_at_most(settings):
    """The API's create path: authentication, the address (its own statement, which also asks
    whether the key has a completed answer: a retry takes no address), then in one transaction
    the idempotency claim, the payment with its first event and its outbox event (one
    statement), and the key's completion; BEGIN and COMMIT are among the captured statements."""
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from tests.factories import ApiKeyFactory

    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = {"amount": "10.00", "crypto_currency": "LTC", "order_id": "o-1"}
    api.post("/api/v1/payments", {**body, "order_id": "o-0"}, format="json")  # warm: key used

    with CaptureQueriesContext(connection) as queries:
        answer = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert answer.status_code == 201, answer.content
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) <= 7, "\n".join(s[:100] for s in statements)
    assert not any(s.startswith('UPDATE "payments_payment"') for s in statements)
    assert sum(s.startswith("SAVEPOINT") for s in statements) <= 1


def test_a_live_create_on_the_merchants_wallet_key_costs_eight_statements_at_most(settings):
    """A live create (the merchant's own wallet key: what a merchant really runs) adds to a
    test-mode one the wallet read and one read of payments (is the derived address another
    payment's, and was one of the key's last indexes paid: the gap limit); the index is taken
    in its own statement, with no transaction around it. Here with the key past the gap limit
    and its last address but one paid, as a merchant's whose buyers pay."""
    from rest_framework.test import APIClient

    from tests.factories import ApiKeyFactory

    settings.DEV_CHAIN_ENABLED = False
    settings.CHAINS = {"litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc",
                                    "nodes": ["http://127.0.0.1:1"]}}  # fmt: skip
    merchant = MerchantFactory.create()
    MerchantWallet.objects.create(
        merchant=merchant, crypto_currency="LTC", extended_public_key=random_account_xpub("utxo")
    )
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = {"amount": "10.00", "crypto_currency": "LTC"}
    for n in range(25):
        made = api.post("/api/v1/payments", {**body, "order_id": f"o-{n}"}, format="json")
        assert made.status_code == 201, made.content
    Payment.objects.filter(merchant=merchant, derivation_index=24).update(amount_received=1)

    with CaptureQueriesContext(connection) as queries:
        answer = api.post(
            "/api/v1/payments", {**body, "order_id": "o-25"}, format="json",
            HTTP_IDEMPOTENCY_KEY="k-live",
        )  # fmt: skip

    assert answer.status_code == 201, answer.content
    assert json.loads(answer.content)["deposit_address"].startswith("rltc1q")
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) <= 8, "\n".join(s[:100] for s in statements)
    taken = next(i for i, sql in enumerate(statements) if "payments_addressindex" in sql)
    opened = next(i for i, sql in enumerate(statements) if sql.startswith("BEGIN"))
    assert taken < opened  # the index is taken before the create's one transaction opens
    assert not any(sql.startswith("SAVEPOINT") for sql in statements)


def _created_then_uncached(key: str, *, wallet: bool = False):
    """Given a payment created with ``key``, its answer no longer in Redis (the state of every
    key before its first replay, and of all of them after Redis lost its data). ``wallet``: the
    merchant receives LTC on its own wallet key (the caller configures the chain)."""
    from rest_framework.test import APIClient

    from resilience.idempotency import default_gate
    from tests.factories import ApiKeyFactory

    merchant = MerchantFactory.create()
    if wallet:
        MerchantWallet.objects.create(
            merchant=merchant,
            crypto_currency="LTC",
            extended_public_key=random_account_xpub("utxo"),
        )
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = {"amount": "10.00", "crypto_currency": "LTC", "order_id": f"o-{key}"}
    first = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == 201, first.content
    default_gate().forget(merchant.public_id, key)  # a live key's scope: its merchant
    return api, merchant, body, first, _counter_version(merchant)


def _counter_version(merchant) -> tuple[int, str]:
    """The merchant's address counter and the transaction that last wrote its row (``xmin``):
    an index taken and given back leaves the counter as it was, but not its row version."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT next_index, xmin::text FROM payments_addressindex WHERE merchant_id = %s",
            [merchant.pk],
        )
        (row,) = cursor.fetchall()
    return row


def test_given_the_cache_lost_an_answer_when_the_create_is_retried_then_the_stored_row_answers_it_without_an_address():
    """A retry whose answer Redis does not hold (the first replay of a key, or Redis lost it) is
    answered from the key's row, asked in the address's own statement: no address is taken and
    given back (the counter's row is not even written), and no transaction is opened."""
    api, merchant, body, first, counter = _created_then_uncached("k-retry")

    with CaptureQueriesContext(connection) as queries:
        again = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="k-retry")

    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert json.loads(again.content) == json.loads(first.content)
    statements = [q["sql"] for q in queries.captured_queries]
    assert "BEGIN" not in statements, statements
    # The API key, the address statement that took nothing, the answer, its replay count.
    assert len(statements) <= 4, statements
    assert _counter_version(merchant) == counter
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_given_a_wallet_and_the_cache_lost_an_answer_when_the_create_is_retried_then_no_index_of_the_key_is_taken(
    settings,
):
    """The same on a merchant's own wallet key (where an index is a real address the wallet
    scans for): the retry is answered, and the key's counter row is not written."""
    settings.DEV_CHAIN_ENABLED = False
    settings.CHAINS = {"litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc",
                                    "nodes": ["http://127.0.0.1:1"]}}  # fmt: skip
    api, merchant, body, first, counter = _created_then_uncached("k-wallet", wallet=True)

    again = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="k-wallet")

    assert json.loads(first.content)["deposit_address"].startswith("rltc1q")
    assert again.status_code == 201, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert json.loads(again.content) == json.loads(first.content)
    assert _counter_version(merchant) == counter
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_given_the_cache_lost_an_answer_and_no_rate_when_the_create_is_retried_then_the_stored_row_answers_it(
    settings,
):
    """Pricing comes before the address: with no rate at all for the pair (no provider, no
    fallback) a new create is refused, but a retry of a committed one still gets its payment."""
    api, merchant, body, first, counter = _created_then_uncached("k-no-rate")
    settings.FALLBACK_RATES = {}  # and tests configure no live provider: no rate at all

    again = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="k-no-rate")
    counter_after_retry = _counter_version(merchant)
    new = api.post(
        "/api/v1/payments",
        {**body, "order_id": "o-new"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-new",
    )

    assert again.status_code == 201, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert json.loads(again.content) == json.loads(first.content)
    assert counter_after_retry == counter
    assert new.status_code == 503, new.content
    assert json.loads(new.content)["error"]["code"] == "rate_unavailable"
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_given_the_cache_lost_an_answer_when_the_key_is_reused_with_another_body_then_422_without_an_address():
    api, merchant, body, _, counter = _created_then_uncached("k-reused")

    other = api.post(
        "/api/v1/payments",
        {**body, "amount": "11.00"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-reused",
    )

    assert other.status_code == 422
    assert json.loads(other.content)["error"]["code"] == "idempotency_key_reused"
    assert _counter_version(merchant) == counter
    assert Payment.objects.filter(merchant=merchant).count() == 1


def test_given_two_processes_creating_through_the_api_at_once_then_no_address_is_shared():
    """The API takes the address before its transaction (the counter's row is not held to its
    commit) and gives back the address of a refused create: across processes, no index and no
    address is ever handed to two payments."""
    from tests.factories import ApiKeyFactory

    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    per_process = 30
    answers = [
        answer["answers"]
        for answer in released_together(
            [
                ["tests.payments.api_create_client", secret, str(per_process), tag]
                for tag in ("a", "b")
            ]
        )
    ]

    statuses = sorted(status for batch in answers for status, _ in batch)
    assert statuses == [201] * 40 + [409] * 20
    payments = Payment.objects.filter(merchant=merchant)
    assert payments.count() == 40
    indexes = [
        index for index in payments.values_list("derivation_index", flat=True) if index is not None
    ]
    assert len(set(indexes)) == 40
    assert payments.values("deposit_address").distinct().count() == 40
    counter = AddressIndex.objects.get(merchant=merchant, key_space="dev:LTC").next_index
    assert counter > max(indexes)  # gaps (refused creates' indexes) are allowed, reuse is not
