"""Exchange ticker adapters: one HTTP attempt against one exchange, turned into a typed price.

Why this layer exists: every exchange speaks its own ticker dialect (Kraken's ``XBT`` and
``{"error": [...], "result": {...}}`` envelope, Binance's USDT-quoted book ticker, Coinbase's
``{"message": ...}`` errors, ...). Payment pricing needs one answer shape, ``ProviderPrice``, and
one error vocabulary that says whether trying again later can help:

* ``ProviderUnavailable`` (and its ``ProviderRateLimited``) is transient: timeouts, refused or
  dropped connections, HTTP 5xx and 408, HTTP 429. Retries and the circuit breaker count these.
* ``ProviderResponseInvalid`` is not: the exchange answered, but with something we must not price
  a payment with (non-JSON, wrong shape, API error payload, a zero/negative/non-finite or
  non-decimal price, bid above ask, other 4xx).
* ``PairNotSupported`` is raised before any request when the exchange has no market for the pair.

Each ``fetch`` makes exactly one HTTP attempt; retries, breakers, caching and aggregation are
layered on top. The attempt is bounded: every network wait by ``timeout``, and reading the body
stops once ``timeout`` has passed since the request started (a server that trickles bytes cannot
hold a worker), so one attempt takes at most about twice ``timeout``.

Money never touches float: JSON is parsed with ``parse_float=Decimal``, NaN/Infinity literals are
refused, and prices must be JSON strings holding plain decimals, converted with ``Decimal(str)``.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, NoReturn

import httpx

from resilience import clock

USER_AGENT = "cryptopay/1.0"
# A ticker is a few hundred bytes; anything this large is not a ticker.
MAX_BODY_BYTES = 256 * 1024
# Plain decimal as exchanges send it: digits, optional fraction; the sign is allowed here only so
# that a negative price is reported as negative rather than as "not a decimal".
_DECIMAL_RE = re.compile(r"-?\d{1,40}(?:\.\d{1,40})?")


@dataclass(frozen=True)
class ProviderPrice:
    """One exchange's price for ``pair`` ("BTC-USD": fiat per one coin).

    ``price`` is the last trade price where the exchange reports one, else the bid/ask midpoint.
    ``raw`` holds the exact response fields the values were parsed from, as strings.
    """

    provider: str
    pair: str
    price: Decimal
    bid: Decimal | None
    ask: Decimal | None
    raw: dict[str, str] = field(hash=False)


class ProviderError(Exception):
    """Base of every adapter failure; says which provider and pair it concerns."""

    def __init__(
        self, message: str, *, provider: str, pair: str, status: int | None = None
    ) -> None:
        super().__init__(f"{provider} {pair}: {message}")
        self.provider = provider
        self.pair = pair
        self.status = status


class ProviderUnavailable(ProviderError):
    """Transient: timeout, connection error, HTTP 5xx or 408. Trying again later may work."""


class ProviderUnreachable(ProviderUnavailable):
    """The exchange's host name does not resolve or nothing listens there: offline, a DNS
    outage, a wrong URL. Retrying within seconds will fail the same way."""


def _unreachable(exc: BaseException) -> bool:
    """Name resolution or connection refused, anywhere in the exception's causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (socket.gaierror, ConnectionRefusedError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, httpx.ConnectError) and (
        "Name or service not known" in str(exc)
        or "Temporary failure in name resolution" in str(exc)
        or "Connection refused" in str(exc)
    )


class ProviderRateLimited(ProviderUnavailable):
    """HTTP 429 (or the exchange's own rate-limit answer); ``retry_after`` seconds if it said."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        pair: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, pair=pair, status=status)
        self.retry_after = retry_after


class ProviderResponseInvalid(ProviderError):
    """Not transient: the exchange answered with something that cannot be used as a price."""


class PairNotSupported(ProviderError):
    """The exchange has no market for the pair; raised without making a request."""


def parse_retry_after(*, value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date.

    Returns None when absent or unparseable; a date in the past gives 0.0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        # A delay, not money; timedelta parses the decimal text without a float literal step.
        return timedelta(seconds=int(text.split(".")[0])).total_seconds()
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else clock.now()
    return max(0.0, (when - reference).total_seconds())


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"non-finite JSON number {name}")


class ExchangeProvider(ABC):
    """One exchange's public ticker. Subclasses give the symbol map, request and parser."""

    name: ClassVar[str]
    default_base_url: ClassVar[str]
    # Our pair ("BTC-USD") -> the exchange's market symbol.
    symbols: ClassVar[dict[str, str]]
    # Statuses that mean "slow down" on this exchange (answered with ProviderRateLimited).
    rate_limit_statuses: ClassVar[frozenset[int]] = frozenset({429})

    def __init__(self, *, base_url: str, timeout: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{self.name}: base_url must be http(s), got {base_url!r}")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"{self.name}: timeout must be a positive number, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout * 1.0  # seconds, for httpx

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url} timeout={self.timeout}>"

    def supports(self, pair: str) -> bool:
        return pair in self.symbols

    def fetch(self, *, pair: str, client: httpx.Client) -> ProviderPrice:
        """One HTTP attempt for ``pair``; raises a ``ProviderError`` subclass on any failure."""
        symbol = self.symbols.get(pair)
        if symbol is None:
            raise PairNotSupported("no market on this exchange", provider=self.name, pair=pair)
        path, params = self._request(symbol=symbol)
        body = self._get_json(client=client, path=path, params=params, pair=pair)
        return self._parse(body=body, pair=pair, symbol=symbol)

    @abstractmethod
    def _request(self, *, symbol: str) -> tuple[str, dict[str, str]]:
        """The ticker path (after the base URL) and query parameters for ``symbol``."""

    @abstractmethod
    def _parse(self, *, body: Any, pair: str, symbol: str) -> ProviderPrice:
        """Turn a decoded HTTP 200 body into a price, or raise a ``ProviderError``."""

    # -- shared machinery ------------------------------------------------------------------

    def _invalid(self, message: str, *, pair: str, status: int | None = 200) -> NoReturn:
        raise ProviderResponseInvalid(message, provider=self.name, pair=pair, status=status)

    def _get_json(
        self, *, client: httpx.Client, path: str, params: dict[str, str], pair: str
    ) -> Any:
        deadline = time.monotonic() + self.timeout
        try:
            with client.stream(
                "GET",
                self.base_url + path,
                params=params,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    self._raise_for_status(response=response, pair=pair, deadline=deadline)
                content = self._read_body(response=response, pair=pair, deadline=deadline)
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"timed out after {self.timeout}s ({type(exc).__name__})",
                provider=self.name,
                pair=pair,
            ) from exc
        except httpx.TransportError as exc:
            if _unreachable(exc):
                raise ProviderUnreachable(
                    f"unreachable: {type(exc).__name__}: {exc}", provider=self.name, pair=pair
                ) from exc
            raise ProviderUnavailable(
                f"transport error: {type(exc).__name__}: {exc}", provider=self.name, pair=pair
            ) from exc
        try:
            return json.loads(
                content.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant
            )
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            self._invalid(f"body is not JSON: {exc}", pair=pair)

    def _read_body(self, *, response: httpx.Response, pair: str, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                self._invalid(f"body larger than {MAX_BODY_BYTES} bytes", pair=pair)
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"body not received within {self.timeout}s", provider=self.name, pair=pair
                )
        return b"".join(chunks)

    def _raise_for_status(
        self, *, response: httpx.Response, pair: str, deadline: float
    ) -> NoReturn:
        status = response.status_code
        try:  # best effort, for the message only
            detail = self._read_body(response=response, pair=pair, deadline=deadline)[:200]
            snippet = detail.decode("utf-8", "replace").strip()
        except (ProviderError, httpx.HTTPError):
            snippet = ""
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if status in self.rate_limit_statuses:
            raise ProviderRateLimited(
                message,
                provider=self.name,
                pair=pair,
                status=status,
                retry_after=parse_retry_after(value=response.headers.get("Retry-After")),
            )
        if status >= 500 or status == 408:
            raise ProviderUnavailable(message, provider=self.name, pair=pair, status=status)
        self._invalid(message, pair=pair, status=status)

    def _object(self, body: Any, *, pair: str, what: str = "body") -> dict[str, Any]:
        if not isinstance(body, dict):
            self._invalid(f"{what} is {type(body).__name__}, expected an object", pair=pair)
        return body

    def _decimal(self, value: Any, *, field_name: str, pair: str) -> Decimal:
        """A strictly positive, finite price sent as a plain decimal string."""
        if value is None:
            self._invalid(f"missing {field_name}", pair=pair)
        if not isinstance(value, str):
            self._invalid(
                f"{field_name} is {type(value).__name__} {value!r}, expected a decimal string",
                pair=pair,
            )
        try:
            number = Decimal(value)
        except InvalidOperation:
            self._invalid(f"{field_name}={value!r} is not a decimal", pair=pair)
        if not number.is_finite():
            self._invalid(f"{field_name}={value!r} is not finite", pair=pair)
        if not _DECIMAL_RE.fullmatch(value):
            self._invalid(f"{field_name}={value!r} is not a plain decimal string", pair=pair)
        if number <= 0:
            self._invalid(f"{field_name}={value!r} is not positive", pair=pair)
        return number

    def _price(
        self,
        *,
        pair: str,
        last: tuple[str, Any] | None,
        bid: tuple[str, Any],
        ask: tuple[str, Any],
        extra_raw: dict[str, str] | None = None,
    ) -> ProviderPrice:
        """Validate ``(raw field name, value)`` pairs and build the price.

        ``last`` None means the exchange gives no last trade: the midpoint is the price.
        """
        bid_value = self._decimal(bid[1], field_name=bid[0], pair=pair)
        ask_value = self._decimal(ask[1], field_name=ask[0], pair=pair)
        if bid_value > ask_value:
            self._invalid(f"crossed book: bid {bid[1]} > ask {ask[1]}", pair=pair)
        raw = dict(extra_raw or {})
        if last is None:
            price = (bid_value + ask_value) / 2
        else:
            price = self._decimal(last[1], field_name=last[0], pair=pair)
            raw[last[0]] = last[1]
        raw[bid[0]] = bid[1]
        raw[ask[0]] = ask[1]
        return ProviderPrice(
            provider=self.name, pair=pair, price=price, bid=bid_value, ask=ask_value, raw=raw
        )


def _first(value: Any) -> Any:
    """First element of a Kraken ``[price, volume, ...]`` array, or None."""
    if isinstance(value, list) and value:
        return value[0]
    return None


class KrakenProvider(ExchangeProvider):
    """Kraken ``GET /0/public/Ticker?pair=XBTUSD``.

    Answers ``{"error": [], "result": {"XXBTZUSD": {"a": [ask, ...], "b": [bid, ...],
    "c": [last, lot volume], ...}}}``: HTTP 200 even for errors, which come as "E..." strings in
    ``error`` ("W..." entries are warnings). The result key is Kraken's internal pair name, not the
    one we asked for, so the single entry is taken. Kraken calls bitcoin XBT.
    """

    name = "kraken"
    default_base_url = "https://api.kraken.com"
    symbols = {
        "BTC-USD": "XBTUSD",
        "BTC-EUR": "XBTEUR",
        "LTC-USD": "LTCUSD",
        "LTC-EUR": "LTCEUR",
        "ETH-USD": "ETHUSD",
        "ETH-EUR": "ETHEUR",
        "USDC-USD": "USDCUSD",
        "USDC-EUR": "USDCEUR",
        "USDT-USD": "USDTUSD",
        "USDT-EUR": "USDTEUR",
    }

    def _request(self, *, symbol: str) -> tuple[str, dict[str, str]]:
        return "/0/public/Ticker", {"pair": symbol}

    def _parse(self, *, body: Any, pair: str, symbol: str) -> ProviderPrice:
        data = self._object(body, pair=pair)
        errors = data.get("error")
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            self._invalid(f"'error' is {errors!r}, expected a list of strings", pair=pair)
        failures = [e for e in errors if e.startswith("E")]
        if failures:
            text = ", ".join(failures)
            if any(
                e.startswith(("EAPI:Rate limit", "EGeneral:Too many", "EGeneral:Temporary lockout"))
                for e in failures
            ):
                raise ProviderRateLimited(text, provider=self.name, pair=pair, status=200)
            if any(e.startswith("EService:") for e in failures):
                raise ProviderUnavailable(text, provider=self.name, pair=pair, status=200)
            self._invalid(f"API error: {text}", pair=pair)
        result = self._object(data.get("result"), pair=pair, what="'result'")
        if len(result) != 1:
            self._invalid(f"'result' has {len(result)} entries, expected 1", pair=pair)
        ((key, ticker),) = result.items()
        ticker = self._object(ticker, pair=pair, what=f"result[{key!r}]")
        return self._price(
            pair=pair,
            last=("c", _first(ticker.get("c"))),
            bid=("b", _first(ticker.get("b"))),
            ask=("a", _first(ticker.get("a"))),
            extra_raw={"result": str(key)},
        )


class CoinbaseProvider(ExchangeProvider):
    """Coinbase Exchange ``GET /products/BTC-USD/ticker``.

    Answers ``{"ask", "bid", "volume", "trade_id", "price", "size", "time"}`` (decimals as
    strings); errors are ``{"message": ...}`` with a 4xx status (404 "NotFound" for an unknown
    product). Requests without a User-Agent are refused, so one is always sent. There is no
    USDC-USD product (Coinbase treats USDC as USD), so that pair is unsupported.
    """

    name = "coinbase"
    default_base_url = "https://api.exchange.coinbase.com"
    symbols = {
        "BTC-USD": "BTC-USD",
        "BTC-EUR": "BTC-EUR",
        "LTC-USD": "LTC-USD",
        "LTC-EUR": "LTC-EUR",
        "ETH-USD": "ETH-USD",
        "ETH-EUR": "ETH-EUR",
        "USDC-EUR": "USDC-EUR",
        "USDT-USD": "USDT-USD",
        "USDT-EUR": "USDT-EUR",
    }

    def _request(self, *, symbol: str) -> tuple[str, dict[str, str]]:
        return f"/products/{symbol}/ticker", {}

    def _parse(self, *, body: Any, pair: str, symbol: str) -> ProviderPrice:
        data = self._object(body, pair=pair)
        if "message" in data and "price" not in data:
            self._invalid(f"API error: {data['message']!r}", pair=pair)
        return self._price(
            pair=pair,
            last=("price", data.get("price")),
            bid=("bid", data.get("bid")),
            ask=("ask", data.get("ask")),
        )


class BitstampProvider(ExchangeProvider):
    """Bitstamp ``GET /api/v2/ticker/btcusd/``.

    Answers ``{"last", "bid", "ask", "high", "low", "vwap", "volume", "open", "timestamp"}``
    (decimals as strings); errors are ``{"status": "error", "reason": ..., "code": ...}``.
    """

    name = "bitstamp"
    default_base_url = "https://www.bitstamp.net"
    symbols = {
        "BTC-USD": "btcusd",
        "BTC-EUR": "btceur",
        "LTC-USD": "ltcusd",
        "LTC-EUR": "ltceur",
        "ETH-USD": "ethusd",
        "ETH-EUR": "etheur",
        "USDC-USD": "usdcusd",
        "USDC-EUR": "usdceur",
        "USDT-USD": "usdtusd",
        "USDT-EUR": "usdteur",
    }

    def _request(self, *, symbol: str) -> tuple[str, dict[str, str]]:
        return f"/api/v2/ticker/{symbol}/", {}

    def _parse(self, *, body: Any, pair: str, symbol: str) -> ProviderPrice:
        data = self._object(body, pair=pair)
        if data.get("status") == "error":
            self._invalid(f"API error: {data.get('reason')!r} ({data.get('code')})", pair=pair)
        return self._price(
            pair=pair,
            last=("last", data.get("last")),
            bid=("bid", data.get("bid")),
            ask=("ask", data.get("ask")),
        )


class BinanceProvider(ExchangeProvider):
    """Binance spot ``GET /api/v3/ticker/bookTicker?symbol=BTCUSDT``.

    Answers ``{"symbol", "bidPrice", "bidQty", "askPrice", "askQty"}``; the price is the bid/ask
    midpoint (the book ticker has no last trade). Errors are ``{"code": -1121, "msg": ...}`` with
    HTTP 400; 429 and 418 (IP banned after ignoring 429s) both carry Retry-After.

    Approximation: Binance has no USD markets, so X-USD is quoted from X/USDT, i.e. one USDT is
    taken as one USD. That is why USDT-USD and USDC-USD are not supported here (they would price a
    stablecoin against itself); EUR pairs use the real EUR markets (BTCEUR, ...).
    """

    name = "binance"
    default_base_url = "https://api.binance.com"
    symbols = {
        "BTC-USD": "BTCUSDT",
        "BTC-EUR": "BTCEUR",
        "LTC-USD": "LTCUSDT",
        "LTC-EUR": "LTCEUR",
        "ETH-USD": "ETHUSDT",
        "ETH-EUR": "ETHEUR",
    }
    rate_limit_statuses = frozenset({418, 429})

    def _request(self, *, symbol: str) -> tuple[str, dict[str, str]]:
        return "/api/v3/ticker/bookTicker", {"symbol": symbol}

    def _parse(self, *, body: Any, pair: str, symbol: str) -> ProviderPrice:
        data = self._object(body, pair=pair)
        if "code" in data and "msg" in data:
            self._invalid(f"API error {data['code']}: {data['msg']!r}", pair=pair)
        if data.get("symbol") != symbol:
            self._invalid(f"answered for symbol {data.get('symbol')!r}, asked {symbol}", pair=pair)
        return self._price(
            pair=pair,
            last=None,
            bid=("bidPrice", data.get("bidPrice")),
            ask=("askPrice", data.get("askPrice")),
            extra_raw={"symbol": symbol},
        )


class GeminiProvider(ExchangeProvider):
    """Gemini ``GET /v1/pubticker/btcusd``.

    Answers ``{"bid", "ask", "last", "volume": {"BTC": ..., "USD": ..., "timestamp": ms}}``;
    errors are ``{"result": "error", "reason": ..., "message": ...}`` with a 4xx status.
    """

    name = "gemini"
    default_base_url = "https://api.gemini.com"
    symbols = {
        "BTC-USD": "btcusd",
        "BTC-EUR": "btceur",
        "LTC-USD": "ltcusd",
        "ETH-USD": "ethusd",
        "ETH-EUR": "etheur",
    }

    def _request(self, *, symbol: str) -> tuple[str, dict[str, str]]:
        return f"/v1/pubticker/{symbol}", {}

    def _parse(self, *, body: Any, pair: str, symbol: str) -> ProviderPrice:
        data = self._object(body, pair=pair)
        if data.get("result") == "error":
            self._invalid(f"API error: {data.get('reason')!r} {data.get('message')!r}", pair=pair)
        return self._price(
            pair=pair,
            last=("last", data.get("last")),
            bid=("bid", data.get("bid")),
            ask=("ask", data.get("ask")),
        )


PROVIDER_CLASSES: dict[str, type[ExchangeProvider]] = {
    cls.name: cls
    for cls in (KrakenProvider, CoinbaseProvider, BitstampProvider, BinanceProvider, GeminiProvider)
}


def build_provider(*, name: str, base_url: str | None, timeout: float) -> ExchangeProvider:
    """The adapter called ``name``, against ``base_url`` (its public API when None)."""
    try:
        cls = PROVIDER_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDER_CLASSES))
        raise ValueError(f"unknown rate provider {name!r} (known: {known})") from None
    return cls(base_url=base_url or cls.default_base_url, timeout=timeout)
