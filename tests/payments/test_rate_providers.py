"""Exchange ticker adapters against a real local HTTP server speaking the exchanges' formats.

Why: the adapters are the only code that sees exchange bytes, and every failure class they report
decides what the layers above do (retry and trip the breaker on ``ProviderUnavailable``, back off
on ``ProviderRateLimited``, distrust on ``ProviderResponseInvalid``, skip on ``PairNotSupported``).
So each provider is run through its real request path and answer shape, and through every fault
the fake can inject, asserting the typed error, that exactly one attempt was made, and that no
float ever reaches a price.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import fields
from datetime import timedelta
from decimal import Decimal
from email.utils import format_datetime

import httpx
import pytest

from payments.rates.providers import (
    MAX_BODY_BYTES,
    PROVIDER_CLASSES,
    ExchangeProvider,
    PairNotSupported,
    ProviderError,
    ProviderPrice,
    ProviderRateLimited,
    ProviderResponseInvalid,
    ProviderUnavailable,
    ProviderUnreachable,
    build_provider,
    parse_retry_after,
)
from resilience.clock import FrozenClock
from testing.exchanges import (
    DEFAULT_PRICES,
    FakeExchanges,
    refused_url,
)

PROVIDERS = ("kraken", "coinbase", "bitstamp", "binance", "gemini")
# The deadline the timeout tests measure; tests that expect an answer allow a loaded machine more.
ATTEMPT_TIMEOUT = 0.2
ANSWER_TIMEOUT = 2.0
ALL_PAIRS = [f"{c}-{f}" for c in ("BTC", "LTC", "ETH", "USDC", "USDT") for f in ("USD", "EUR")]

# The exact request each provider must send per pair, from the exchanges' documentation; a pair
# missing here must be unsupported by that provider.
EXPECTED_TARGETS: dict[str, dict[str, str]] = {
    "kraken": {
        pair: f"/0/public/Ticker?pair={pair.replace('BTC', 'XBT').replace('-', '')}"
        for pair in ALL_PAIRS
    },
    "coinbase": {pair: f"/products/{pair}/ticker" for pair in ALL_PAIRS if pair != "USDC-USD"},
    "bitstamp": {pair: f"/api/v2/ticker/{pair.replace('-', '').lower()}/" for pair in ALL_PAIRS},
    "binance": {
        "BTC-USD": "/api/v3/ticker/bookTicker?symbol=BTCUSDT",
        "BTC-EUR": "/api/v3/ticker/bookTicker?symbol=BTCEUR",
        "LTC-USD": "/api/v3/ticker/bookTicker?symbol=LTCUSDT",
        "LTC-EUR": "/api/v3/ticker/bookTicker?symbol=LTCEUR",
        "ETH-USD": "/api/v3/ticker/bookTicker?symbol=ETHUSDT",
        "ETH-EUR": "/api/v3/ticker/bookTicker?symbol=ETHEUR",
    },
    "gemini": {
        pair: f"/v1/pubticker/{pair.replace('-', '').lower()}"
        for pair in ("BTC-USD", "BTC-EUR", "LTC-USD", "ETH-USD", "ETH-EUR")
    },
}
# Providers whose ticker has a last trade; the others are priced at the bid/ask midpoint.
HAS_LAST = {"kraken", "coinbase", "bitstamp", "gemini"}

LAST, BID, ASK = "61234.7", "61234.1", "61234.9"
EXPECTED_RAW: dict[str, dict[str, str]] = {
    "kraken": {"result": "XXBTZUSD", "c": LAST, "b": BID, "a": ASK},
    "coinbase": {"price": LAST, "bid": BID, "ask": ASK},
    "bitstamp": {"last": LAST, "bid": BID, "ask": ASK},
    "binance": {"symbol": "BTCUSDT", "bidPrice": BID, "askPrice": ASK},
    "gemini": {"last": LAST, "bid": BID, "ask": ASK},
}


@pytest.fixture
def fake(fake_exchanges: FakeExchanges) -> FakeExchanges:
    return fake_exchanges


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # One client for the module, as the service shares one: building one costs ~40 ms (TLS setup).
    with httpx.Client() as http:
        yield http


def adapter(fake: FakeExchanges, name: str, *, timeout: float = ANSWER_TIMEOUT) -> ExchangeProvider:
    return build_provider(name=name, base_url=fake.base_url_for(name), timeout=timeout)


def fetch_error(
    fake: FakeExchanges,
    client: httpx.Client,
    name: str,
    *,
    pair: str = "BTC-USD",
    timeout: float = ANSWER_TIMEOUT,
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        adapter(fake, name, timeout=timeout).fetch(pair=pair, client=client)
    error = caught.value
    assert (error.provider, error.pair) == (name, pair)
    return error


def assert_no_float(price: ProviderPrice) -> None:
    for f in fields(price):
        assert not isinstance(getattr(price, f.name), float), f.name
    assert type(price.price) is Decimal
    assert price.bid is None or type(price.bid) is Decimal
    assert price.ask is None or type(price.ask) is Decimal
    assert all(type(k) is str and type(v) is str for k, v in price.raw.items())


# -- registry -------------------------------------------------------------------------------


def test_registry_names_and_factory_defaults() -> None:
    assert set(PROVIDER_CLASSES) == set(PROVIDERS)
    defaults = {
        "kraken": "https://api.kraken.com",
        "coinbase": "https://api.exchange.coinbase.com",
        "bitstamp": "https://www.bitstamp.net",
        "binance": "https://api.binance.com",
        "gemini": "https://api.gemini.com",
    }
    for name, url in defaults.items():
        provider = build_provider(name=name, base_url=None, timeout=2.5)
        assert isinstance(provider, PROVIDER_CLASSES[name])
        assert (provider.name, provider.base_url, provider.timeout) == (name, url, 2.5)
    assert build_provider(name="kraken", base_url="http://x:1/", timeout=1).base_url == "http://x:1"
    with pytest.raises(ValueError, match="unknown rate provider"):
        build_provider(name="mtgox", base_url=None, timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        build_provider(name="kraken", base_url=None, timeout=0)
    with pytest.raises(ValueError, match="base_url"):
        build_provider(name="kraken", base_url="ftp://127.0.0.1", timeout=1)


# -- the real formats -----------------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
def test_parses_the_real_ticker(fake: FakeExchanges, client, name: str) -> None:
    fake.set_price(name, "BTC-USD", price=LAST, bid=BID, ask=ASK)

    price = adapter(fake, name).fetch(pair="BTC-USD", client=client)

    expected_price = Decimal(LAST) if name in HAS_LAST else Decimal("61234.5")  # the midpoint
    assert price == ProviderPrice(
        provider=name,
        pair="BTC-USD",
        price=expected_price,
        bid=Decimal(BID),
        ask=Decimal(ASK),
        raw=EXPECTED_RAW[name],
    )
    assert_no_float(price)
    hash(price)  # usable as a key even though raw is a dict
    (seen,) = fake.requests_seen(name)
    assert seen.target == EXPECTED_TARGETS[name]["BTC-USD"]
    assert seen.headers["user-agent"] == "cryptopay/1.0"


@pytest.mark.parametrize("pair", ALL_PAIRS)
@pytest.mark.parametrize("name", PROVIDERS)
def test_symbol_maps(fake: FakeExchanges, client, name: str, pair: str) -> None:
    provider = adapter(fake, name)
    target = EXPECTED_TARGETS[name].get(pair)
    assert provider.supports(pair) is (target is not None)
    if target is None:
        with pytest.raises(PairNotSupported):
            provider.fetch(pair=pair, client=client)
        assert fake.requests(name) == 0
        return

    price = provider.fetch(pair=pair, client=client)

    last, bid, ask = (Decimal(v) for v in DEFAULT_PRICES[pair])
    assert (price.pair, price.bid, price.ask) == (pair, bid, ask)
    assert price.price == (last if name in HAS_LAST else (bid + ask) / 2)
    assert_no_float(price)
    assert [r.target for r in fake.requests_seen(name)] == [target]


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("pair", ["DOGE-USD", "BTC-GBP", "btc-usd", "BTCUSD", ""])
def test_unknown_pairs_are_refused_without_a_request(
    fake: FakeExchanges, client, name: str, pair: str
) -> None:
    provider = adapter(fake, name)
    assert provider.supports(pair) is False
    with pytest.raises(PairNotSupported) as caught:
        provider.fetch(pair=pair, client=client)
    assert (caught.value.provider, caught.value.pair) == (name, pair)
    assert fake.requests(name) == 0


# -- transient failures ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["500", "502", "503", "504", "408"])
@pytest.mark.parametrize("name", PROVIDERS)
def test_server_errors_are_unavailable(fake: FakeExchanges, client, name: str, status: str) -> None:
    fake.set_fault(name, status)
    error = fetch_error(fake, client, name)
    assert type(error) is ProviderUnavailable
    assert error.status == int(status)
    assert fake.requests(name) == 1  # one attempt, no retries


@pytest.mark.parametrize("name", PROVIDERS)
def test_429_is_rate_limited_with_retry_after(fake: FakeExchanges, client, name: str) -> None:
    fake.set_fault(name, "429")
    error = fetch_error(fake, client, name)
    assert type(error) is ProviderRateLimited
    assert isinstance(error, ProviderUnavailable)
    assert (error.status, error.retry_after) == (429, 7.0)
    assert fake.requests(name) == 1


@pytest.mark.parametrize("name", PROVIDERS)
def test_429_without_retry_after(fake: FakeExchanges, client, name: str) -> None:
    fake.set_fault(name, "429", retry_after=None)
    error = fetch_error(fake, client, name)
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after is None


def test_429_retry_after_as_http_date(
    fake: FakeExchanges, client, frozen_clock: FrozenClock
) -> None:
    when = frozen_clock.now() + timedelta(seconds=90)
    fake.set_fault("coinbase", "429", retry_after=format_datetime(when, usegmt=True))
    error = fetch_error(fake, client, "coinbase")
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 90.0


def test_binance_418_ip_ban_is_rate_limited(fake: FakeExchanges, client) -> None:
    fake.set_fault("binance", "418", retry_after="120")
    error = fetch_error(fake, client, "binance")
    assert isinstance(error, ProviderRateLimited)
    assert (error.status, error.retry_after) == (418, 120.0)


@pytest.mark.parametrize("name", PROVIDERS)
def test_timeout_is_unavailable_within_the_attempt_timeout(
    fake: FakeExchanges, client, name: str
) -> None:
    fake.set_fault(name, "timeout")  # the handler blocks until teardown releases it
    started = time.monotonic()
    error = fetch_error(fake, client, name, timeout=ATTEMPT_TIMEOUT)
    elapsed = time.monotonic() - started
    assert type(error) is ProviderUnavailable
    assert ATTEMPT_TIMEOUT * 0.9 <= elapsed < ATTEMPT_TIMEOUT + 0.5
    assert fake.requests(name) == 1


@pytest.mark.parametrize("name", PROVIDERS)
def test_trickled_body_is_cut_off_at_the_attempt_deadline(
    fake: FakeExchanges, client, name: str
) -> None:
    # A byte every 50 ms never trips the per-read timeout; the whole answer would take seconds.
    fake.set_fault(name, "trickle")
    started = time.monotonic()
    error = fetch_error(fake, client, name, timeout=ATTEMPT_TIMEOUT)
    elapsed = time.monotonic() - started
    assert type(error) is ProviderUnavailable
    assert elapsed < 2 * ATTEMPT_TIMEOUT + 0.4


@pytest.mark.parametrize("name", PROVIDERS)
def test_connection_refused_is_unavailable_and_says_unreachable(client, name: str) -> None:
    provider = build_provider(name=name, base_url=refused_url(), timeout=ATTEMPT_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as caught:
        provider.fetch(pair="BTC-USD", client=client)
    # Still transient (retried with services); embedded mode skips it (test_rates_unreachable.py).
    assert type(caught.value) is ProviderUnreachable
    assert caught.value.status is None
    assert time.monotonic() - started < ATTEMPT_TIMEOUT + 0.5


@pytest.mark.parametrize("name", PROVIDERS)
def test_dropped_connection_is_unavailable(fake: FakeExchanges, client, name: str) -> None:
    fake.set_fault(name, "drop")
    error = fetch_error(fake, client, name)
    assert type(error) is ProviderUnavailable
    assert fake.requests(name) == 1


# -- answers that must not be priced with ----------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        "malformed", "zero", "negative", "nan", "number", "missing", "shape", "api_error",
        "400", "403", "404", "302",
    ],
)  # fmt: skip
@pytest.mark.parametrize("name", PROVIDERS)
def test_bad_answers_are_invalid(fake: FakeExchanges, client, name: str, fault: str) -> None:
    fake.set_fault(name, fault)
    error = fetch_error(fake, client, name)
    assert type(error) is ProviderResponseInvalid
    assert not isinstance(error, ProviderUnavailable)
    assert fake.requests(name) == 1


@pytest.mark.parametrize(
    "value", ["0", "0.000", "-3", "NaN", "Infinity", "-Infinity", "1e5", "abc", "", " 5"]
)
@pytest.mark.parametrize("which", ["price", "bid", "ask"])
@pytest.mark.parametrize("name", PROVIDERS)
def test_every_price_field_is_validated(
    fake: FakeExchanges, client, name: str, which: str, value: str
) -> None:
    fake.set_price(name, "BTC-USD", **{which: value})
    provider = adapter(fake, name)
    if which == "price" and name not in HAS_LAST:
        # Binance's book ticker has no last price; the midpoint of a sound book is used.
        assert provider.fetch(pair="BTC-USD", client=client).price == Decimal("60000.50")
        return
    error = fetch_error(fake, client, name)
    assert type(error) is ProviderResponseInvalid


@pytest.mark.parametrize("name", PROVIDERS)
def test_bid_above_ask_is_invalid_and_a_locked_book_is_fine(
    fake: FakeExchanges, client, name: str
) -> None:
    fake.set_price(name, "BTC-USD", price="61234.5", bid="61235", ask="61234")
    assert type(fetch_error(fake, client, name)) is ProviderResponseInvalid

    fake.set_price(name, "BTC-USD", price="61234.5", bid="61234.5", ask="61234.5")
    price = adapter(fake, name).fetch(pair="BTC-USD", client=client)
    assert price.bid == price.ask == price.price == Decimal("61234.5")


@pytest.mark.parametrize("name", PROVIDERS)
def test_oversized_body_is_invalid(fake: FakeExchanges, client, name: str) -> None:
    fake.set_raw_response(name, status=200, body=b" " * (MAX_BODY_BYTES + 1) + b"{}")
    assert type(fetch_error(fake, client, name)) is ProviderResponseInvalid


# -- exchange specifics ----------------------------------------------------------------------

KRAKEN_TICKER = (
    '"XXBTZUSD": {"a": ["60001.0", "1", "1.000"], "b": ["60000.0", "2", "2.000"], '
    '"c": ["60000.5", "0.001"], "v": ["1", "2"], "p": ["1", "2"], "t": [1, 2], '
    '"l": ["1", "2"], "h": ["1", "2"], "o": "60000.1"}'
)


def test_kraken_warnings_alone_do_not_fail(fake: FakeExchanges, client) -> None:
    body = '{"error": ["WGeneral:Deprecated"], "result": {' + KRAKEN_TICKER + "}}"
    fake.set_raw_response("kraken", status=200, body=body)
    price = adapter(fake, "kraken").fetch(pair="BTC-USD", client=client)
    assert (price.price, price.raw["result"]) == (Decimal("60000.5"), "XXBTZUSD")


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ('["EAPI:Rate limit exceeded"]', ProviderRateLimited),
        ('["EService:Unavailable"]', ProviderUnavailable),
        ('["EService:Busy"]', ProviderUnavailable),
        ('["EQuery:Unknown asset pair"]', ProviderResponseInvalid),
        ('["EGeneral:Invalid arguments"]', ProviderResponseInvalid),
        ('"EGeneral:Internal error"', ProviderResponseInvalid),  # not a list
    ],
)
def test_kraken_error_list(fake: FakeExchanges, client, errors: str, expected) -> None:
    fake.set_raw_response("kraken", status=200, body='{"error": ' + errors + "}")
    assert type(fetch_error(fake, client, "kraken")) is expected


@pytest.mark.parametrize(
    "body",
    [
        '{"error": [], "result": {}}',
        '{"error": [], "result": {'
        + KRAKEN_TICKER
        + ", "
        + KRAKEN_TICKER.replace("XXBT", "XETH")
        + "}}",
        '{"error": [], "result": {"XXBTZUSD": {"a": [], "b": ["1"], "c": ["1"]}}}',
        '{"error": [], "result": {"XXBTZUSD": {"a": [NaN], "b": ["1"], "c": ["1"]}}}',
        '{"error": [], "result": {"XXBTZUSD": {"a": [60001.0], "b": ["1"], "c": ["1"]}}}',
    ],
    ids=["no-result", "two-results", "empty-ask", "bare-NaN", "float-ask"],
)
def test_kraken_bad_result_shapes(fake: FakeExchanges, client, body: str) -> None:
    fake.set_raw_response("kraken", status=200, body=body)
    assert type(fetch_error(fake, client, "kraken")) is ProviderResponseInvalid


def test_binance_answer_for_another_symbol_is_invalid(fake: FakeExchanges, client) -> None:
    body = '{"symbol": "ETHUSDT", "bidPrice": "3000.1", "bidQty": "1", "askPrice": "3000.2"}'
    fake.set_raw_response("binance", status=200, body=body)
    assert type(fetch_error(fake, client, "binance")) is ProviderResponseInvalid


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("binance", '{"code": -1121, "msg": "Invalid symbol."}'),
        ("coinbase", '{"message": "NotFound"}'),
        ("bitstamp", '{"status": "error", "reason": "Invalid currency pair.", "code": "x"}'),
        ("gemini", '{"result": "error", "reason": "InvalidSymbol", "message": "Bad"}'),
    ],
)
def test_error_payloads_with_http_200_are_invalid(
    fake: FakeExchanges, client, name: str, body: str
) -> None:
    fake.set_raw_response(name, status=200, body=body)
    assert type(fetch_error(fake, client, name)) is ProviderResponseInvalid


def test_fake_reset_restores_answers(fake: FakeExchanges, client) -> None:
    fake.set_fault("bitstamp", "timeout")
    fetch_error(fake, client, "bitstamp", timeout=ATTEMPT_TIMEOUT)
    fake.set_price("bitstamp", "BTC-USD", price="1.5")
    fake.reset()
    assert fake.requests("bitstamp") == 0
    price = adapter(fake, "bitstamp").fetch(pair="BTC-USD", client=client)
    assert price.price == Decimal(DEFAULT_PRICES["BTC-USD"][0])


# -- Retry-After ------------------------------------------------------------------------------


def test_parse_retry_after(frozen_clock: FrozenClock) -> None:
    now = frozen_clock.now()
    assert parse_retry_after(value="7") == 7.0
    assert parse_retry_after(value=" 12 ") == 12.0
    assert parse_retry_after(value="0") == 0.0
    assert parse_retry_after(value=format_datetime(now + timedelta(seconds=30), usegmt=True)) == 30
    assert parse_retry_after(value=format_datetime(now - timedelta(seconds=30), usegmt=True)) == 0
    for garbage in (None, "", "soon", "-5", "Wed, 99 Foo 2026"):
        assert parse_retry_after(value=garbage) is None
