"""A rate provider this machine cannot reach (its name does not resolve, nothing listens): with
CRYPTOPAY_RATES_SKIP_UNREACHABLE (embedded mode's default) it is tried once and then skipped for
the breaker's break, instead of costing every quote its retries. Real sockets on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from payments.rates.live import rate_providers_reachability
from payments.rates.quotes import rate_quote
from resilience.breaker import FAILURES, breakers
from tests.payments import test_rates

pytestmark = pytest.mark.django_db

live_rates = test_rates.live_rates  # providers on the fake exchanges, clean caches and breakers


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failures(name: str) -> float:
    return FAILURES.labels(f"rates:{name}")._value.get()


@pytest.mark.parametrize(
    "url", [lambda: f"http://127.0.0.1:{closed_port()}", lambda: "http://kraken.invalid"]
)
def test_given_skipping_when_a_provider_is_unreachable_then_it_is_tried_once_then_skipped(
    live_rates, settings, url
):
    settings.RATES_SKIP_UNREACHABLE = True
    settings.RATE_PROVIDER_URLS = {**settings.RATE_PROVIDER_URLS, "kraken": url()}
    before = failures("kraken")

    first = rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)
    second = rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)

    assert failures("kraken") - before == 1  # one attempt, no retries, then not asked again
    assert breakers.get("rates:kraken").state == "open"
    assert first.source == second.source == "live"
    assert "kraken" not in [p["name"] for p in first.providers + second.providers]


def test_given_no_skipping_when_a_provider_refuses_then_it_is_retried_as_any_transient_error(
    live_rates, settings
):
    settings.RATES_SKIP_UNREACHABLE = False
    settings.RATE_PROVIDER_URLS = {
        **settings.RATE_PROVIDER_URLS, "kraken": f"http://127.0.0.1:{closed_port()}"
    }  # fmt: skip
    before = failures("kraken")

    rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)

    assert failures("kraken") - before == 4  # one attempt and MaxRetries 3
    assert breakers.get("rates:kraken").state == "closed"


def test_the_start_probe_names_unreachable_providers_and_trips_only_their_breakers(
    live_rates, settings
):
    settings.RATES_SKIP_UNREACHABLE = True
    settings.RATE_PROVIDER_URLS = {
        **settings.RATE_PROVIDER_URLS,
        "kraken": f"http://127.0.0.1:{closed_port()}",
        "coinbase": "http://coinbase.invalid",
    }

    reach = rate_providers_reachability(timeout=2)

    assert reach.reachable == ["bitstamp", "binance"]
    assert reach.unreachable == {
        "kraken": "connection refused", "coinbase": "name does not resolve"
    }  # fmt: skip
    assert [breakers.get(f"rates:{n}").state for n in test_rates.PROVIDERS] == [
        "open", "open", "closed", "closed"
    ]  # fmt: skip
