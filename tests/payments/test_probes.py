"""Exchange-rate providers and chain nodes under the degradation handler: levels from real probes
(fake exchanges and a fake JSON-RPC node over real HTTP), recovery switching to backups and back,
and expiry paused while no node of a chain answers."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import caches
from django_redis.cache import RedisCache

from payments import services
from payments.chains.config import chains
from payments.chains.rpc import NodeClient
from payments.probes import expiry_held_currencies
from payments.rates import quotes
from payments.rates.live import provider_breaker
from payments.rates.quotes import rate_quote
from payments.states import PaymentStatus
from resilience import degradation
from resilience.breaker import CircuitState, breakers
from resilience.degradation import dependencies_monitor, dependencies_recover
from resilience.failover import redact
from resilience.models import DependencyState
from resilience.selectors import dependency_list, operation_chain_list
from testing.exchanges import refused_url
from tests.factories import make_payment
from tests.resilience.helpers import recovery_count

PROVIDERS = ["kraken", "coinbase", "bitstamp"]


@pytest.fixture
def clean_resilience():
    degradation._local_states.clear()
    breakers.forget(close=True)
    yield
    breakers.forget(close=True)
    degradation._local_states.clear()


@pytest.fixture
def live_rates(settings, fake_exchanges, clean_resilience, db):
    settings.RATE_PROVIDER_ORDER = PROVIDERS
    settings.RATE_PROVIDER_URLS = {name: fake_exchanges.base_url for name in PROVIDERS}
    settings.RATE_PROVIDER_TIMEOUT = timedelta(seconds=0.3)
    settings.RATE_PROVIDER_BUDGET = timedelta(seconds=1)
    settings.RATE_RETRY_WAIT_INITIAL = timedelta(seconds=0.01)
    settings.RATE_RETRY_WAIT_MAX = timedelta(seconds=0.05)
    settings.RATE_PROVIDERS_PER_QUOTE = 3
    cache = caches["default"]
    assert isinstance(cache, RedisCache)  # these tests run against Redis
    cache.delete_pattern("rates:*")
    quotes.rate_cache.cache_clear()
    yield fake_exchanges
    cache.delete_pattern("rates:*")
    quotes.rate_cache.cache_clear()


def levels_of(*names: str) -> list[str]:
    return [DependencyState.objects.get(name=name).level for name in names]


def test_given_all_rate_providers_failing_when_recovery_runs_then_backup_takes_over_and_healthy_again(
    live_rates,
):
    fake = live_rates
    first = rate_quote(crypto_currency="BTC", fiat_currency="USD")
    assert first.source == "live"
    for name in PROVIDERS:
        fake.set_fault(name, "503")

    # Given every provider failing: the exchange-rate dependency is Degraded (quotes still answer
    # from the cache levels), each provider Critical.
    levels = dependencies_monitor()
    assert levels["exchange-rates"] == "degraded"
    assert [levels[f"rates:{name}"] for name in PROVIDERS] == ["critical"] * 3
    assert rate_quote(crypto_currency="BTC", fiat_currency="USD").source == "cache"
    # With nothing to switch to, recovery changes nothing and keeps the cached quotes.
    assert dependencies_recover() == {"exchange-rates": "failed"}
    assert provider_breaker("kraken").state is CircuitState.CLOSED

    # When the backup answers again, recovery switches to it: the failing providers leave the
    # rotation everywhere and the cached quote they priced is re-quoted from the backup.
    fake.set_fault("coinbase", None)
    mitigated = recovery_count("exchange-rates", "mitigated")
    assert dependencies_recover() == {"exchange-rates": "mitigated"}
    assert recovery_count("exchange-rates", "mitigated") == mitigated + 1
    assert provider_breaker("kraken").state is CircuitState.ISOLATED
    assert provider_breaker("bitstamp").state is CircuitState.ISOLATED
    state = DependencyState.objects.get(name="exchange-rates")
    assert state.last_recovery_outcome == "mitigated"
    assert "switched away from rates:kraken, rates:bitstamp" in state.last_recovery_detail
    assert "rates:kraken: 1 cached quote(s) replaced" in state.last_recovery_detail
    kraken_calls = fake.requests("kraken")
    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)
    assert quote.source == "live"
    assert [p["name"] for p in quote.providers] == ["coinbase"]
    assert fake.requests("kraken") == kraken_calls  # no time lost on the primary

    # Then the primary answers again: monitoring sees it answering but out of rotation, recovery
    # puts it back, and the dependency is Healthy.
    fake.set_fault("kraken", None)
    fake.set_fault("bitstamp", None)
    assert dependencies_monitor()["rates:kraken"] == "degraded"
    recovered = recovery_count("exchange-rates", "recovered")
    assert dependencies_recover() == {"exchange-rates": "recovered"}
    assert recovery_count("exchange-rates", "recovered") == recovered + 1
    assert provider_breaker("kraken").state is CircuitState.CLOSED
    assert dependencies_monitor()["exchange-rates"] == "healthy"
    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)
    assert [p["name"] for p in quote.providers] == PROVIDERS
    view = next(v for v in dependency_list() if v.name == "exchange-rates")
    assert (view.level.value, view.recovery_attempts, view.last_recovery_outcome) == (
        "healthy",
        3,
        "recovered",
    )
    assert next(c for c in operation_chain_list() if c.name == "quotes").current == "live"


class _Node(BaseHTTPRequestHandler):
    height = 321

    def log_message(self, format, *args):
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": self.height}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_node():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Node)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield f"http://user:secret@127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def litecoin(settings, clean_resilience, fake_node, db):
    dead = refused_url()
    settings.CHAINS = {
        "litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc", "nodes": [dead, fake_node]}
    }
    settings.CHAIN_RPC_TIMEOUT = timedelta(seconds=1)
    return dead, fake_node


def test_given_a_dead_first_node_when_recovery_runs_then_it_reconnects_and_switches_node(litecoin):
    dead, alive = litecoin
    group = "chain:litecoin"
    first, second = f"{group}:0:{redact(dead)}", f"{group}:1:{redact(alive)}"

    levels = dependencies_monitor()
    assert (levels[first], levels[second], levels[group]) == ("critical", "healthy", "degraded")
    assert dependencies_recover() == {group: "mitigated"}

    client = NodeClient(chains()["litecoin"])
    assert client.pool.breaker(0).state is CircuitState.ISOLATED
    assert client.call("getblockcount") == 321
    assert client.node == redact(alive)
    state = DependencyState.objects.get(name=group)
    assert state.last_recovery_detail == f"reconnected; switched away from {first}"
    chain_reads = next(c for c in operation_chain_list() if c.name == "chain-reads:litecoin")
    assert chain_reads.steps[-1] == "pause expiry timers"
    assert chain_reads.current == f"node 2 ({redact(alive)})"
    # Credentials in node URLs never reach the diagnostics.
    assert "secret" not in json.dumps(
        [v.diagnostics for v in dependency_list()] + [v.description for v in dependency_list()]
    )


def test_given_no_node_of_a_chain_answers_when_expiry_sweeps_then_its_payments_wait(
    litecoin, settings, frozen_clock
):
    dead, _ = litecoin
    settings.CHAINS["litecoin"]["nodes"] = [dead, refused_url()]
    held_ltc = make_payment(crypto_currency="LTC")
    test_ltc = make_payment(crypto_currency="LTC", livemode=False)  # development chain
    btc = make_payment(crypto_currency="BTC")
    assert dependencies_monitor()["chain:litecoin"] == "critical"
    assert expiry_held_currencies() == ["LTC"]
    chain_reads = next(c for c in operation_chain_list() if c.name == "chain-reads:litecoin")
    assert chain_reads.current == "pause expiry timers"
    frozen_clock.advance(timedelta(minutes=16))
    assert dependencies_monitor()["chain:litecoin"] == "critical"  # still down

    services.payments_expire_due()

    held_ltc.refresh_from_db()
    btc.refresh_from_db()
    assert (held_ltc.status, btc.status) == (PaymentStatus.PENDING, PaymentStatus.EXPIRED)
    test_ltc.refresh_from_db()
    assert test_ltc.status == PaymentStatus.EXPIRED  # a test payment waits for no real chain

    # A node answers again: the timers resume and the overdue payment expires.
    settings.CHAINS["litecoin"]["nodes"] = litecoin[::-1]
    assert dependencies_monitor()["chain:litecoin"] == "degraded"
    services.payments_expire_due()
    held_ltc.refresh_from_db()
    assert held_ltc.status == PaymentStatus.EXPIRED
