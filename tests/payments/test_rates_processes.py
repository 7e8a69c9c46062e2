"""Rates across real OS processes (two daphne servers, plain Python processes) sharing Redis and
PostgreSQL, priced from the fake exchanges on 127.0.0.1 with injected faults."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.cache import cache
from django.db import connection
from django_redis import get_redis_connection

from accounts.models import Merchant
from notifications.models import Event
from payments.models import ExchangeRateEvent, Payment
from resilience import idempotency
from resilience.breaker import breakers
from resilience.models import IdempotencyKey
from testing.servers import asgi_server, server_environment
from tests.factories import ApiKeyFactory, MerchantFactory

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ("kraken", "coinbase", "bitstamp")
LEASE = 1.0  # seconds: short, so a dead leader's lease lapses quickly in the tests
SOFA = {"amount": "25.00", "crypto_currency": "BTC", "description": "one sofa"}


@pytest.fixture
def cold_rates(fake_exchanges):
    """No quote anywhere: every process starts cold; providers are the fakes."""
    cache.delete_pattern("rates:*")  # type: ignore[attr-defined]  # django-redis's cache
    breakers.forget(close=True)
    yield fake_exchanges
    fake_exchanges.reset()
    cache.delete_pattern("rates:*")  # type: ignore[attr-defined]
    breakers.forget(close=True)


def rate_env(fake: Any) -> dict[str, str]:
    return {
        "CRYPTOPAY_RATE_PROVIDERS": ",".join(PROVIDERS),
        **{f"CRYPTOPAY_RATE_{name.upper()}_URL": fake.base_url for name in PROVIDERS},
        "CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK": "0",
        # The held fetch must outlast no timeout: the test decides when the exchanges answer.
        "CRYPTOPAY_RATE_PROVIDER_TIMEOUT_SECONDS": "20",
        "CRYPTOPAY_RATE_PROVIDER_BUDGET_SECONDS": "20",
        "CRYPTOPAY_RATE_REFRESH_LEASE_SECONDS": str(LEASE),
        "CRYPTOPAY_DEV_CHAIN": "1",
    }


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        threading.Event().wait(0.01)


def waiting_for_refresh(pair: str) -> int:
    """How many processes are subscribed, waiting for the pair's refresh to land."""
    channel = cache.make_key(f"rates:{pair}:refreshed")
    return dict(get_redis_connection().pubsub_numsub(channel)).get(channel.encode(), 0)


def refresh_lock_held(pair: str) -> bool:
    return bool(get_redis_connection().exists(cache.make_key(f"rates:{pair}:refreshing")))


def hold_the_exchanges(fake: Any) -> None:
    for name in PROVIDERS:
        fake.set_fault(name, "hold")


def merchant_secret() -> tuple[Merchant, str]:
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    return merchant, secret


def let_the_exchanges_answer(fake: Any) -> None:
    for name in PROVIDERS:
        fake.set_fault(name, None)
    fake.release_blocked()


def test_given_a_cold_cache_when_20_first_payments_race_on_two_processes_then_all_are_priced_by_one_refresh(
    tmp_path, cold_rates
):
    merchant, secret = merchant_secret()
    hold_the_exchanges(cold_rates)
    answers: list[httpx.Response | BaseException | None] = [None] * 20

    with (
        asgi_server(tmp_path, env=rate_env(cold_rates)) as a,
        asgi_server(tmp_path, env=rate_env(cold_rates)) as b,
    ):
        clients = [
            httpx.Client(
                base_url=(a if i % 2 else b).base_url,
                timeout=60,
                headers={"Authorization": f"Bearer {secret}"},
            )
            for i in range(20)
        ]
        barrier = threading.Barrier(20)

        def send(i: int) -> None:
            barrier.wait(timeout=30)
            try:
                answers[i] = clients[i].post("/api/v1/payments", json=SOFA)
            except BaseException as exc:  # asserted on below
                answers[i] = exc
            finally:
                clients[i].close()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        # One process leads the refresh (the exchanges hold it), the other waits for it.
        wait_until(
            lambda: cold_rates.requests("kraken") >= 1 and bool(waiting_for_refresh("BTC-USD"))
        )
        first_seen = time.monotonic()
        # The leader renews its lease: still held after several leases, nobody took over.
        wait_until(lambda: time.monotonic() - first_seen > 3 * LEASE)
        assert refresh_lock_held("BTC-USD")
        let_the_exchanges_answer(cold_rates)
        for thread in threads:
            thread.join(timeout=60)

    statuses = [a.status_code if isinstance(a, httpx.Response) else a for a in answers]
    assert statuses == [201] * 20, [getattr(a, "text", a) for a in answers]
    assert {a.json()["quote"]["source"] for a in answers} <= {"live", "cache"}  # type: ignore[union-attr]
    assert [cold_rates.requests(name) for name in PROVIDERS] == [1, 1, 1]  # one refresh for all
    assert Payment.objects.filter(merchant=merchant).count() == 20


def spawn_rate_client(env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.payments.rate_client", "BTC", "USD"],
        cwd=ROOT,
        env=server_environment(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None  # both are pipes
    assert json.loads(process.stdout.readline()) == {"ready": True}
    return process


def ask(process: subprocess.Popen) -> None:
    assert process.stdin is not None  # a pipe (spawn_rate_client)
    process.stdin.write("go\n")
    process.stdin.flush()


def test_given_the_refreshing_process_is_killed_then_a_waiting_process_refreshes_within_a_lease(
    cold_rates,
):
    hold_the_exchanges(cold_rates)
    env = rate_env(cold_rates)
    leader, follower = spawn_rate_client(env), spawn_rate_client(env)
    try:
        ask(leader)
        wait_until(lambda: cold_rates.requests("kraken") >= 1 and refresh_lock_held("BTC-USD"))
        ask(follower)
        wait_until(lambda: waiting_for_refresh("BTC-USD") >= 1)

        leader.kill()  # mid-refresh, holding the lease
        leader.wait(timeout=10)
        killed_at = time.monotonic()
        let_the_exchanges_answer(cold_rates)
        answer = json.loads(follower.communicate(timeout=30)[0])
        took = time.monotonic() - killed_at
    finally:
        for process in (leader, follower):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    assert answer["source"] == "live"
    assert took < 10  # the former lease, the budget plus 2 s, that blocked every process


def test_given_every_provider_fails_when_a_payment_is_created_then_the_503_says_when_to_retry(
    tmp_path, cold_rates
):
    _, secret = ApiKeyFactory.create_with_secret(merchant=MerchantFactory.create())
    for name in PROVIDERS:
        cold_rates.set_fault(name, "503")
    env = {
        **rate_env(cold_rates),
        "CRYPTOPAY_RATE_RETRY_WAIT_INITIAL_SECONDS": "0.01",
        "CRYPTOPAY_RATE_RETRY_WAIT_MAX_SECONDS": "0.05",
        "CRYPTOPAY_RATES_RETRY_AFTER_SECONDS": "7",
    }

    with asgi_server(tmp_path, env=env) as server:
        refused = httpx.post(
            f"{server.base_url}/api/v1/payments",
            json=SOFA,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "rate_unavailable"
    assert refused.headers["Retry-After"] == "7"


@pytest.fixture
def payment_inserts_fail():
    """PostgreSQL refuses every payment insert: the request fails after it was priced."""
    table = Payment._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION test_refuse_payment() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'payment insert refused by the test'; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            f"CREATE TRIGGER test_refuse_payment BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_payment()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER IF EXISTS test_refuse_payment ON {table}")
        cursor.execute("DROP FUNCTION IF EXISTS test_refuse_payment()")


def test_given_a_payment_request_fails_after_pricing_then_the_rate_change_and_its_event_are_still_recorded(
    tmp_path, cold_rates, payment_inserts_fail
):
    merchant, secret = merchant_secret()

    with asgi_server(tmp_path, env=rate_env(cold_rates)) as server:
        failed = httpx.post(
            f"{server.base_url}/api/v1/payments",
            json=SOFA,
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "k-1"},
            timeout=60,
        )

    assert failed.status_code == 500, failed.text
    assert not Payment.objects.exists()
    assert not IdempotencyKey.objects.filter(owner=merchant.public_id).exists()  # rolled back
    recorded = ExchangeRateEvent.objects.get(pair="BTC-USD")
    assert recorded.previous_rate is None
    assert Event.objects.filter(type=ExchangeRateEvent.type, subject="BTC-USD").count() == 1


def test_given_a_slow_provider_while_a_keyed_payment_is_priced_then_no_transaction_or_key_lock_is_held(
    tmp_path, cold_rates
):
    merchant, secret = merchant_secret()
    hold_the_exchanges(cold_rates)
    answer: list[httpx.Response] = []
    gate = idempotency.default_gate()

    with asgi_server(tmp_path, env=rate_env(cold_rates)) as server:
        sender = threading.Thread(
            target=lambda: answer.append(
                httpx.post(
                    f"{server.base_url}/api/v1/payments",
                    json=SOFA,
                    headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "k-2"},
                    timeout=60,
                )
            )
        )
        sender.start()
        try:
            wait_until(lambda: cold_rates.requests("kraken") >= 1)  # the fetch is under way
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'"
                )
                open_transactions = cursor.fetchone()[0]
                cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                advisory_locks = cursor.fetchone()[0]
            key_rows = IdempotencyKey.objects.filter(owner=merchant.public_id).count()
            assert gate._redis is not None, "the gate needs Redis here"
            redis_lock = gate._redis.exists(gate._redis_key("lock", merchant.public_id, "k-2"))
        finally:
            let_the_exchanges_answer(cold_rates)
            sender.join(timeout=60)

    assert (open_transactions, advisory_locks, key_rows, redis_lock) == (0, 0, 0, 0)
    assert answer[0].status_code == 201, answer[0].text
    assert IdempotencyKey.objects.get(owner=merchant.public_id, key="k-2").status == "completed"
