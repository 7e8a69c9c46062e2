"""/metrics: who may read it, and what it shows after a short scenario run by two real processes
(the web server of `manage.py serve` and a Celery worker) sharing one PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from notifications import queues
from notifications.delivery import deliveries_create
from notifications.endpoints import webhook_endpoint_create
from notifications.models import WebhookDelivery
from notifications.outbox import event_publish
from notifications.tasks import webhooks_deliver_due
from payments.models import ChainCursor
from resilience import clock
from resilience.tasks import dependencies_monitor, dependencies_recover
from testing.nodes import free_port
from tests.cryptopay.test_settings import (
    PYTHON,
    REPO,
    _stop_group,
    _test_database_url,
    _wait_until,
    celery_worker,
    require_services_mode,
    subprocess_env,
)
from tests.factories import ApiKeyFactory, MerchantFactory

# --- access -------------------------------------------------------------------------------------


def test_given_no_token_when_a_loopback_client_scrapes_then_it_gets_the_metrics(client):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"cryptopay_idempotency_requests_total" in response.content


@pytest.mark.parametrize(
    "meta",
    [
        {"REMOTE_ADDR": "203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.9"},
        {"REMOTE_ADDR": "::1", "HTTP_X_REAL_IP": "203.0.113.9"},
    ],
)
def test_given_no_token_when_a_remote_or_proxied_client_scrapes_then_it_is_refused(client, meta):
    response = client.get("/metrics", **meta)

    assert response.status_code == 403
    assert b"cryptopay_" not in response.content


def test_given_a_token_when_a_client_scrapes_then_only_the_right_bearer_token_is_served(
    client, settings
):
    settings.METRICS_TOKEN = "s3cret-metrics-token"

    missing = client.get("/metrics")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    right = client.get(
        "/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token", REMOTE_ADDR="203.0.113.9"
    )

    assert missing.status_code == wrong.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert right.status_code == 200


# --- two processes ------------------------------------------------------------------------------


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in metrics, f"{name}{labels} not exposed; have: " + ", ".join(
        sorted({n for n, _ in metrics if n.startswith(name.split("{")[0][:20])})
    )
    return metrics[key]


def value_or_none(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def advisory_lock_id(owner: str, key: str) -> int:
    digest = hashlib.sha256(f"{owner}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@pytest.mark.django_db(transaction=True)
def test_given_a_web_and_a_worker_process_when_a_scenario_runs_then_metrics_shows_both(
    tmp_path, settings, fake_exchanges
):
    require_services_mode()
    run = uuid.uuid4().hex[:10]
    prefix = f"cryptopay-test-{os.getpid()}-metrics-{run}"
    settings.NOTIFY_REDIS_PREFIX = f"{prefix}:notify"
    metrics_dir = tmp_path / "metrics"
    queue = f"{prefix}-celery"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env(
        drop=("DATABASE_URL", "REDIS_URL", "SECURE_SSL_REDIRECT"),
        DATABASE_URL=_test_database_url(),
        REDIS_URL=os.environ["REDIS_URL"],
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        CRYPTOPAY_REDIS_PREFIX=prefix,
        # One live stream per user: a second connection evicts the first.
        CRYPTOPAY_WS_MAX_CONNECTIONS_PER_USER="1",
        CRYPTOPAY_DEV_CHAIN="1",
        # The test speaks for a TLS-terminating proxy on loopback (X-Forwarded-Proto: https).
        CRYPTOPAY_TRUSTED_PROXIES="127.0.0.1",
        CRYPTOPAY_RATE_PROVIDERS="kraken",
        CRYPTOPAY_RATE_KRAKEN_URL=fake_exchanges.base_url_for("kraken"),
        CRYPTOPAY_CHAINS=json.dumps(
            {
                "litecoin": {
                    "kind": "utxo",
                    "currency": "LTC",
                    "hrp": "ltc",
                    "nodes": ["http://rpc:secret@127.0.0.1:9"],
                }
            }
        ),
        CRYPTOPAY_LOG_FORMAT="json",
    )
    merchant = MerchantFactory.create()
    _, api_key = ApiKeyFactory.create_with_secret(merchant=merchant)
    # What the watcher would have recorded: 3 blocks behind, last poll 10 s ago.
    ChainCursor.objects.create(
        chain="litecoin",
        height=100,
        tip_height=103,
        block_hash="00ab",
        polled_at=clock.now() - timedelta(seconds=10),
    )
    # Five deliveries due now to an endpoint where nothing listens: the worker's sweep fails
    # each, and the endpoint's breaker opens.
    endpoint, _ = webhook_endpoint_create(
        owner=merchant.public_id, url=f"http://127.0.0.1:{free_port()}/hook"
    )
    for number in range(5):
        event = event_publish(
            owner=merchant.public_id,
            type="payment.created",
            subject=f"pay_m{number}",
            data={"n": number},
        )
        deliveries_create(event=event)

    logs = {name: tmp_path / f"{name}.log" for name in ("web", "worker")}
    with ExitStack() as stack:  # closed in reverse: streams, worker, web
        with logs["web"].open("wb") as out:
            web = subprocess.Popen(
                [PYTHON, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.callback(_stop_group, web)
        worker = stack.enter_context(celery_worker(queue=queue, log=logs["worker"], env=env))

        def web_up() -> bool:
            try:
                return httpx.get(f"{base}/metrics", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until(
            web_up, seconds=60, worker=web, log=logs["web"], what="the web server to answer"
        )

        # --- the scenario, over HTTP (HTTPS as a proxy would say: the API redirects plain HTTP)
        api = httpx.Client(
            base_url=base,
            timeout=30,
            headers={"Authorization": f"Bearer {api_key}", "X-Forwarded-Proto": "https"},
        )
        body = {"amount": "25.00", "currency": "USD", "crypto_currency": "BTC"}
        first = api.post("/api/v1/payments", json=body, headers={"Idempotency-Key": "m-1"})
        replay = api.post("/api/v1/payments", json=body, headers={"Idempotency-Key": "m-1"})
        mismatch = api.post(
            "/api/v1/payments", json={**body, "amount": "26.00"}, headers={"Idempotency-Key": "m-1"}
        )
        second = api.post("/api/v1/payments", json=body, headers={"Idempotency-Key": "m-2"})
        # A retry while "the first request" still runs: we hold the key's database lock.
        with psycopg.connect(_test_database_url()) as holder, holder.transaction():
            holder.execute(
                "SELECT pg_advisory_xact_lock(%s)", [advisory_lock_id(merchant.public_id, "m-3")]
            )
            conflict = api.post("/api/v1/payments", json=body, headers={"Idempotency-Key": "m-3"})
        assert (first.status_code, replay.status_code, mismatch.status_code) == (201, 201, 422)
        assert (second.status_code, conflict.status_code) == (201, 409)
        assert replay.headers["Idempotent-Replayed"] == "true"

        sweep = webhooks_deliver_due.apply_async(queue=queue)
        _wait_until(
            lambda: f"[{sweep.id}] succeeded" in logs["worker"].read_text(),
            seconds=60,
            worker=worker,
            log=logs["worker"],
            what="the webhook sweep",
        )
        # Monitoring finds the chain's only node unreachable; recovery tries it (worker).
        for task in (dependencies_monitor, dependencies_recover):
            done = task.apply_async(queue=queue)
            _wait_until(
                lambda done=done: f"[{done.id}] succeeded" in logs["worker"].read_text(),
                seconds=90,
                worker=worker,
                log=logs["worker"],
                what=task.name,
            )
        # Two live streams of one merchant (web): the second evicts the first.
        stream_url = f"ws://127.0.0.1:{port}/ws/merchant/"
        auth = {"Authorization": f"Bearer {api_key}"}
        for _ in range(2):
            stack.enter_context(ws_connect(stream_url, additional_headers=auth, open_timeout=10))
        _wait_until(
            lambda: value_or_none(
                scrape(base), "cryptopay_websocket_evictions_total", enforced_by="redis"
            ),
            seconds=20,
            worker=web,
            log=logs["web"],
            what="the eviction",
        )

        metrics = scrape(base)
        # The same answer through a proxy is refused.
        proxied = httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})

    assert proxied.status_code == 403
    # Both processes wrote their own files into the shared directory.
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in Path(metrics_dir).glob("*.db")}
    assert {web.pid, worker.pid} <= pids

    # Idempotency (web process).
    idem = "cryptopay_idempotency_requests_total"
    assert value(metrics, idem, outcome="executed") == 2
    assert value(metrics, idem, outcome="replayed") == 1
    assert value(metrics, idem, outcome="mismatch") == 1
    assert value(metrics, idem, outcome="conflict") == 1

    # Quotes per level and rate age (web process). A payment is priced before its key is
    # claimed, so the second payment and the conflict each read the cached rate, and so does
    # the replay (answered from its key's row, asked in the statement that would have taken its
    # address); the mismatch (from the replay's Redis copy) comes before any pricing.
    quotes = "cryptopay_rate_quotes_total"
    assert value(metrics, quotes, pair="BTC-USD", level="live") == 1
    assert value(metrics, quotes, pair="BTC-USD", level="cache") == 3
    assert 0 <= value(metrics, "cryptopay_rate_age_seconds", pair="BTC-USD") < 120

    # Webhooks, breaker and the task (worker process), backlog (sampled by the web process).
    breaker = f"webhook:{endpoint.public_id}"
    assert value(metrics, "cryptopay_webhook_delivery_attempts_total", outcome="retrying") == 5
    assert value(metrics, "cryptopay_webhook_delivery_attempts_total", outcome="succeeded") == 0
    assert value(metrics, "cryptopay_circuit_breaker_failures_total", breaker=breaker) == 5
    assert value(metrics, "cryptopay_circuit_breaker_state", breaker=breaker) == 2  # open
    transitions = "cryptopay_circuit_breaker_transitions_total"
    assert value(metrics, transitions, breaker=breaker, from_state="closed", to_state="open") == 1
    pending = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).count()
    assert pending == 5
    assert value(metrics, "cryptopay_webhook_backlog") == pending
    assert 0 <= value(metrics, "cryptopay_webhook_backlog_oldest_seconds") < 300
    assert (
        value(
            metrics,
            "cryptopay_celery_tasks_total",
            task="notifications.tasks.webhooks_deliver_due",
            state="SUCCESS",
        )
        == 1
    )

    # Notification queues: nothing drains them here, so they hold every event of the scenario.
    sizes = queues.sizes()
    assert sizes["normal"] >= 7  # five of ours, two payments created
    for priority, size in sizes.items():
        assert value(metrics, "cryptopay_notifications_queue_size", priority=priority) == size
        assert value(metrics, "cryptopay_notifications_dispatched_total", priority=priority) == 0

    # Watcher lag (sampled from the chain's cursor).
    assert value(metrics, "cryptopay_chain_watcher_lag_blocks", chain="litecoin") == 3
    assert 10 <= value(metrics, "cryptopay_chain_watcher_poll_age_seconds", chain="litecoin") < 120

    # Recovery attempts per service (worker), WebSocket connections and evictions (web).
    recoveries = {
        dict(labels)["service"]: count
        for (name, labels), count in metrics.items()
        if name == "cryptopay_recovery_attempts_total"
    }
    assert recoveries and all(count >= 1 for count in recoveries.values()), recoveries
    connections = [
        count for (name, _), count in metrics.items() if name == "cryptopay_websocket_connections"
    ]
    assert sum(connections) == 1  # the evicted one is gone, the newer one is open
    assert value(metrics, "cryptopay_websocket_evictions_total", enforced_by="redis") >= 1

    # django-prometheus's request metrics, and no sampler failed.
    requests = "django_http_requests_total_by_method_total"
    assert value(metrics, requests, method="POST") == 5
    assert not [key for key in metrics if key[0] == "cryptopay_metrics_sampler_errors_total"]
