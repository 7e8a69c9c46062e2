"""Quotes from fake exchanges on 127.0.0.1: aggregation, retries, breakers, cache levels, policy."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import caches
from django_redis.cache import RedisCache

from payments.errors import RateUnavailable
from payments.models import ExchangeRateEvent, Payment
from payments.rates import quotes
from payments.rates.quotes import rate_quote, rate_quote_for_payment
from payments.rates.refresh import rates_refresh_in_use
from resilience.breaker import breakers
from tests.conftest import api_client_for
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

PROVIDERS = ["kraken", "coinbase", "bitstamp", "binance"]


def forget_cached_rates() -> None:
    """Drop every rate the shared (Redis) cache holds: each test starts from the providers."""
    shared = caches["default"]
    assert isinstance(shared, RedisCache)  # these tests run against Redis
    shared.delete_pattern("rates:*")


@pytest.fixture
def live_rates(settings, fake_exchanges, frozen_clock):
    """Providers pointed at the fakes; small timeouts and waits; clean caches and breakers."""
    settings.RATE_PROVIDER_ORDER = PROVIDERS
    settings.RATE_PROVIDER_URLS = {name: fake_exchanges.base_url for name in PROVIDERS}
    settings.RATE_PROVIDER_TIMEOUT = timedelta(seconds=0.3)
    settings.RATE_PROVIDER_BUDGET = timedelta(seconds=2)
    settings.RATE_RETRY_WAIT_INITIAL = timedelta(seconds=0.01)
    settings.RATE_RETRY_WAIT_MAX = timedelta(seconds=0.05)
    settings.RATE_PROVIDERS_PER_QUOTE = 3
    settings.RATES_ALLOW_STATIC_FALLBACK = False
    forget_cached_rates()
    quotes.rate_cache.cache_clear()
    breakers.forget(close=True)
    yield fake_exchanges
    forget_cached_rates()
    quotes.rate_cache.cache_clear()
    breakers.forget(close=True)


def test_a_live_quote_is_the_median_of_three_providers_with_provenance(live_rates):
    live_rates.set_price("kraken", "BTC-USD", price="60100")
    live_rates.set_price("coinbase", "BTC-USD", price="60000")
    live_rates.set_price("bitstamp", "BTC-USD", price="60050")

    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD")

    assert quote.source == "live"
    assert quote.value == Decimal("60050")
    assert [p["name"] for p in quote.providers] == ["kraken", "coinbase", "bitstamp"]
    assert {p["name"]: p["price"] for p in quote.providers} == {
        "kraken": "60100",
        "coinbase": "60000",
        "bitstamp": "60050",
    }
    assert quote.bid is not None and quote.ask is not None and quote.bid <= quote.ask
    assert live_rates.requests("binance") == 0  # the backup was not needed


def test_the_next_quote_comes_from_the_cache_with_its_age(live_rates, frozen_clock):
    first = rate_quote(crypto_currency="ETH", fiat_currency="EUR")
    frozen_clock.advance(timedelta(seconds=90))

    second = rate_quote(crypto_currency="ETH", fiat_currency="EUR")

    assert (second.source, second.age_seconds, second.value) == ("cache", 90, first.value)
    assert sum(live_rates.requests(p) for p in PROVIDERS) == 3


def test_a_lying_provider_is_dropped_as_an_outlier(live_rates):
    live_rates.set_price("kraken", "BTC-USD", price="60000")
    live_rates.set_price("coinbase", "BTC-USD", price="60030")
    live_rates.set_price("bitstamp", "BTC-USD", price="66000")  # 10 % off

    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD")

    assert quote.value == Decimal("60015")
    assert {p["name"]: p["used"] for p in quote.providers} == {
        "kraken": True,
        "coinbase": True,
        "bitstamp": False,
    }


def test_a_failing_primary_is_retried_three_times_then_the_backup_answers(live_rates):
    live_rates.set_fault("kraken", "500")

    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD")

    assert live_rates.requests("kraken") == 4  # one attempt and MaxRetries 3
    assert live_rates.requests("binance") == 1
    assert [p["name"] for p in quote.providers] == ["coinbase", "bitstamp", "binance"]
    assert quote.source == "live"


@pytest.mark.parametrize(
    ("fault", "retry_after", "attempts"),
    [
        ("429", "0", 4),  # Retry-After honoured and within the budget: retried
        ("429", "7", 1),  # asked to wait longer than we may: go to a backup instead
        ("malformed", None, 1),  # not transient: never retried
        ("zero", None, 1),
        ("timeout", None, 4),
        ("503", None, 4),
    ],
)
def test_only_transient_errors_are_retried(live_rates, fault, retry_after, attempts):
    live_rates.set_fault("kraken", fault, retry_after=retry_after)

    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD")

    assert live_rates.requests("kraken") == attempts
    assert "kraken" not in [p["name"] for p in quote.providers]


def test_an_open_breaker_stops_calls_to_a_failing_provider(live_rates, frozen_clock):
    live_rates.set_fault("kraken", "malformed")
    for _ in range(5):  # five failed quotes: the breaker's minimum throughput at 100 %
        rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)
    assert live_rates.requests("kraken") == 5

    quote = rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)

    assert live_rates.requests("kraken") == 5  # rejected by the breaker, no HTTP request
    assert quote.source == "live"
    assert breakers.get("rates:kraken").state == "open"


def test_when_every_provider_fails_the_levels_step_down_with_their_ages(
    live_rates, frozen_clock, settings
):
    settings.RATES_ALLOW_STATIC_FALLBACK = True
    live = rate_quote(crypto_currency="LTC", fiat_currency="USD")
    for provider in PROVIDERS:
        live_rates.set_fault(provider, "503")

    frozen_clock.advance(timedelta(minutes=4))
    cached = rate_quote(crypto_currency="LTC", fiat_currency="USD")
    frozen_clock.advance(timedelta(minutes=56))
    emergency = rate_quote(crypto_currency="LTC", fiat_currency="USD")
    frozen_clock.advance(timedelta(hours=1, seconds=1))
    fallback = rate_quote(crypto_currency="LTC", fiat_currency="USD")

    assert live.source == "live"
    assert (cached.source, cached.age_seconds, cached.value) == ("cache", 240, live.value)
    assert (emergency.source, emergency.age_seconds, emergency.value) == (
        "emergency",
        3600,
        live.value,
    )
    assert (fallback.source, fallback.value) == ("fallback", Decimal("70"))


def test_production_policy_refuses_payments_from_fallback_rates_with_a_503(live_rates, merchant):
    for provider in PROVIDERS:
        live_rates.set_fault(provider, "503")
    api = api_client_for(merchant)

    created = api.post(
        "/api/v1/payments", {"amount": "10.00", "crypto_currency": "BTC"}, format="json"
    )
    shown = api.get("/api/v1/rates", {"crypto": "BTC", "fiat": "USD"})

    assert created.status_code == 503
    assert created.json()["error"]["code"] == "rate_unavailable"
    assert created["Retry-After"] == "10"
    assert Payment.objects.count() == 0
    assert shown.status_code == 200
    assert shown.json()["source"] == "fallback"


def test_a_quote_older_than_the_maximum_age_is_refused_for_payments(
    live_rates, frozen_clock, settings
):
    settings.RATES_MAX_QUOTE_AGE = timedelta(minutes=10)
    rate_quote(crypto_currency="BTC", fiat_currency="USD")
    for provider in PROVIDERS:
        live_rates.set_fault(provider, "503")
    frozen_clock.advance(timedelta(minutes=30))

    with pytest.raises(RateUnavailable, match="1800 s old"):
        rate_quote_for_payment(crypto_currency="BTC", fiat_currency="USD")


def test_a_payment_stores_its_quote_with_full_provenance(live_rates, merchant):
    api = api_client_for(merchant)

    body = api.post(
        "/api/v1/payments", {"amount": "10.00", "crypto_currency": "BTC"}, format="json"
    ).json()

    payment = Payment.objects.get(public_id=body["id"])
    assert payment.rate_source == "live"
    assert [p["name"] for p in payment.rate_providers] == ["kraken", "coinbase", "bitstamp"]
    assert body["quote"]["source"] == "live"
    assert body["quote"]["bid"] is not None
    assert Decimal(body["quote"]["rate"]) == payment.rate


def test_the_rates_endpoint_shows_the_current_quote(live_rates, merchant):
    body = api_client_for(merchant).get("/api/v1/rates", {"crypto": "ETH"}).json()

    assert body["object"] == "rate"
    assert body["pair"] == "ETH-USD"
    assert body["source"] == "live"
    assert len(body["providers"]) == 3


def test_a_changed_rate_is_recorded_once_as_an_event(live_rates, frozen_clock):
    rate_quote(crypto_currency="BTC", fiat_currency="USD")
    rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)  # same prices
    for provider in ("kraken", "coinbase", "bitstamp"):
        live_rates.set_price(provider, "BTC-USD", price="61000")
    rate_quote(crypto_currency="BTC", fiat_currency="USD", force_refresh=True)

    events = list(ExchangeRateEvent.objects.filter(pair="BTC-USD").order_by("id"))
    assert [e.rate for e in events][-1] == Decimal("61000")
    assert len(events) == 2  # the first value and the change, not the repeat
    assert events[-1].previous_rate == events[0].rate


def test_the_periodic_refresh_covers_the_pairs_of_open_payments(live_rates, merchant, settings):
    settings.RATES_ALLOW_STATIC_FALLBACK = True
    make_payment(merchant=merchant, crypto_currency="LTC", currency="EUR")

    levels = rates_refresh_in_use()

    assert levels == {"LTC-EUR": "live"}
