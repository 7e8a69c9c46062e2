"""A fake of the exchanges' public ticker APIs: one real HTTP server on 127.0.0.1 for all of them.

Why a real server rather than a mocked client: the adapters must be proven against bytes on a
socket, i.e. the exchanges' real paths, query strings and JSON shapes, and against the ways a
network really fails (a handler that never answers, a connection closed without a response, a
body trickling in, a port where nothing listens). Each exchange's paths are distinct, so one
``ThreadingHTTPServer`` serves Kraken, Coinbase, Bitstamp, Binance and Gemini together and
``base_url_for(provider)`` is the same URL for all.

Markets and answers here are written from the exchanges' documentation, independently of the
adapters' symbol maps, so a wrong map shows up as the exchange's own "unknown pair" error.

Faults (``set_fault``): None, a numeric HTTP status ("500", "503", "408", "404", "302", ...;
"429" and "418" carry ``Retry-After``), "timeout" (the handler blocks on an event released by
``reset``/``stop``), "hold" (the same wait, then the normal answer: a slow exchange the test
decides when to let answer), "drop" (close without answering), "trickle" (valid headers, then the body a
byte at a time), "malformed" (invalid JSON), "zero", "negative", "nan" (every price field "0",
"-1.5" or "NaN"), "number" (prices as JSON numbers, not strings), "missing" (the price field
left out), "shape" (a JSON array instead of an object), "api_error" (the exchange's own error
payload). ``set_raw_response`` answers with exact bytes for one-off cases.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

PROVIDERS = ("kraken", "coinbase", "bitstamp", "binance", "gemini")

# The venues' markets: exchange symbol -> our pair (Kraken: -> (our pair, result key)).
KRAKEN_MARKETS: dict[str, tuple[str, str]] = {
    "XBTUSD": ("BTC-USD", "XXBTZUSD"),
    "XBTEUR": ("BTC-EUR", "XXBTZEUR"),
    "LTCUSD": ("LTC-USD", "XLTCZUSD"),
    "LTCEUR": ("LTC-EUR", "XLTCZEUR"),
    "ETHUSD": ("ETH-USD", "XETHZUSD"),
    "ETHEUR": ("ETH-EUR", "XETHZEUR"),
    "USDCUSD": ("USDC-USD", "USDCUSD"),
    "USDCEUR": ("USDC-EUR", "USDCEUR"),
    "USDTUSD": ("USDT-USD", "USDTZUSD"),
    "USDTEUR": ("USDT-EUR", "USDTEUR"),
}
COINBASE_MARKETS: dict[str, str] = {
    p: p
    for p in (
        "BTC-USD", "BTC-EUR", "LTC-USD", "LTC-EUR", "ETH-USD", "ETH-EUR",
        "USDC-EUR", "USDT-USD", "USDT-EUR",
    )
}  # fmt: skip
BITSTAMP_MARKETS: dict[str, str] = {
    p.replace("-", "").lower(): p
    for p in (
        "BTC-USD", "BTC-EUR", "LTC-USD", "LTC-EUR", "ETH-USD", "ETH-EUR",
        "USDC-USD", "USDC-EUR", "USDT-USD", "USDT-EUR",
    )
}  # fmt: skip
BINANCE_MARKETS: dict[str, str] = {
    "BTCUSDT": "BTC-USD",
    "BTCEUR": "BTC-EUR",
    "LTCUSDT": "LTC-USD",
    "LTCEUR": "LTC-EUR",
    "ETHUSDT": "ETH-USD",
    "ETHEUR": "ETH-EUR",
}
GEMINI_MARKETS: dict[str, str] = {
    "btcusd": "BTC-USD",
    "btceur": "BTC-EUR",
    "ltcusd": "LTC-USD",
    "ethusd": "ETH-USD",
    "etheur": "ETH-EUR",
}

# Our pair -> (last, bid, ask) until set_price says otherwise.
DEFAULT_PRICES: dict[str, tuple[str, str, str]] = {
    "BTC-USD": ("60000.50", "60000.00", "60001.00"),
    "BTC-EUR": ("55000.50", "55000.00", "55001.00"),
    "LTC-USD": ("70.12", "70.10", "70.14"),
    "LTC-EUR": ("64.12", "64.10", "64.14"),
    "ETH-USD": ("3000.25", "3000.20", "3000.30"),
    "ETH-EUR": ("2750.25", "2750.20", "2750.30"),
    "USDC-USD": ("1.0001", "1.0000", "1.0002"),
    "USDC-EUR": ("0.9201", "0.9200", "0.9202"),
    "USDT-USD": ("1.0002", "1.0001", "1.0003"),
    "USDT-EUR": ("0.9202", "0.9201", "0.9203"),
}

# What each venue says when the pair is unknown (also the "api_error" fault): status, body.
API_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "kraken": (200, {"error": ["EQuery:Unknown asset pair"]}),
    "coinbase": (404, {"message": "NotFound"}),
    "bitstamp": (400, {"status": "error", "reason": "Invalid currency pair.", "code": "400.001"}),
    "binance": (400, {"code": -1121, "msg": "Invalid symbol."}),
    "gemini": (400, {"result": "error", "reason": "InvalidSymbol", "message": "Bad symbol"}),
}
RATE_LIMIT_BODIES: dict[str, dict[str, Any]] = {
    "kraken": {"error": ["EAPI:Rate limit exceeded"]},
    "coinbase": {"message": "Public rate limit exceeded"},
    "bitstamp": {"status": "error", "reason": "Rate limit exceeded", "code": "400.002"},
    "binance": {"code": -1003, "msg": "Too many requests; current limit is 6000 weight."},
    "gemini": {"result": "error", "reason": "RateLimit", "message": "Requests were made too fast"},
}
# The field that carries "the price" (left out by the "missing" fault).
PRICE_FIELD = {
    "kraken": "c",
    "coinbase": "price",
    "bitstamp": "last",
    "binance": "askPrice",
    "gemini": "last",
}
FAULT_VALUES = {"zero": "0", "negative": "-1.5", "nan": "NaN"}
KNOWN_FAULTS = frozenset(
    {"timeout", "hold", "drop", "trickle", "malformed", "number", "missing", "shape", "api_error"}
    | set(FAULT_VALUES)
)
TRICKLE_INTERVAL = 0.05  # seconds between bytes: below any read timeout, so only a deadline helps


@dataclass(frozen=True)
class RecordedRequest:
    provider: str
    path: str
    query: dict[str, list[str]]
    target: str  # the request target exactly as sent, "/0/public/Ticker?pair=XBTUSD"
    headers: dict[str, str] = field(hash=False)


@dataclass
class _RawResponse:
    status: int
    body: bytes
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeExchanges

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up mid-answer is the point of several faults.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FakeExchange/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if not any(name.lower() == "content-type" for name in headers or {}):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (ConnectionError, TimeoutError):
            pass


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _route(path: str, query: dict[str, list[str]]) -> tuple[str, str | None] | None:
    """(provider, venue symbol or None) for a ticker request path, None for an unknown path."""
    if path == "/0/public/Ticker":
        return "kraken", _first(query, "pair")
    if path == "/api/v3/ticker/bookTicker":
        return "binance", _first(query, "symbol")
    for provider, pattern in (
        ("coinbase", r"/products/([^/]+)/ticker"),
        ("bitstamp", r"/api/v2/ticker/([^/]+)/"),
        ("gemini", r"/v1/pubticker/([^/]+)"),
    ):
        match = re.fullmatch(pattern, path)
        if match:
            return provider, match.group(1)
    return None


class FakeExchanges:
    """The fake exchanges server with its controls. Start with ``start()`` or ``with``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self._stopped = False
        self._init_state()

    def _init_state(self) -> None:
        self._prices: dict[tuple[str, str], dict[str, str]] = {}
        self._faults: dict[str, str | None] = {}
        self._retry_after: dict[str, str | None] = {}
        self._raw: dict[str, _RawResponse] = {}
        self._seen: dict[str, list[RecordedRequest]] = {p: [] for p in (*PROVIDERS, "unknown")}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeExchanges:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; handlers blocked by "timeout"/"trickle" are released first."""
        with self._lock:
            self._stopped = True
            self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeExchanges:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        # An AF_INET server's address is (str, int); the bytes in the stubs are for AF_UNIX.
        return f"http://{host!s}:{port}"

    def base_url_for(self, provider: str) -> str:
        self._check_provider(provider)
        return self.base_url

    # -- controls --------------------------------------------------------------------------

    def set_price(
        self,
        provider: str,
        pair: str,
        *,
        price: str | None = None,
        bid: str | None = None,
        ask: str | None = None,
    ) -> None:
        """Override the last/bid/ask strings this venue quotes for ``pair`` (None: keep)."""
        self._check_provider(provider)
        with self._lock:
            values = self._prices.setdefault((provider, pair), self._defaults(pair))
            for name, value in (("price", price), ("bid", bid), ("ask", ask)):
                if value is not None:
                    values[name] = value

    def set_fault(self, provider: str, fault: str | None, *, retry_after: str | None = "7") -> None:
        """Make every following request to ``provider`` fail this way (None: answer normally).

        ``retry_after`` is the Retry-After header sent with "429"/"418" (None: no header).
        """
        self._check_provider(provider)
        if fault is not None and fault not in KNOWN_FAULTS and not fault.isdigit():
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._faults[provider] = fault
            self._retry_after[provider] = retry_after

    def set_raw_response(
        self,
        provider: str,
        *,
        status: int,
        body: str | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer every following request to ``provider`` with exactly this (until ``reset``)."""
        self._check_provider(provider)
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._raw[provider] = _RawResponse(status=status, body=data, headers=headers or {})

    def requests(self, provider: str) -> int:
        """How many requests reached ``provider``'s endpoints."""
        with self._lock:
            return len(self._seen[provider])

    def requests_seen(self, provider: str) -> list[RecordedRequest]:
        with self._lock:
            return list(self._seen[provider])

    def release_blocked(self) -> None:
        """Let handlers stuck in "timeout"/"trickle" finish (they answer nothing more)."""
        with self._lock:
            self._release.set()
            if not self._stopped:
                self._release = threading.Event()

    def reset(self) -> None:
        """Default prices, no faults, no raw answers, no recorded requests; blocked released."""
        self.release_blocked()
        with self._lock:
            self._init_state()

    # -- serving ---------------------------------------------------------------------------

    @staticmethod
    def _check_provider(provider: str) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; the fake serves {PROVIDERS}")

    @staticmethod
    def _defaults(pair: str) -> dict[str, str]:
        last, bid, ask = DEFAULT_PRICES.get(pair, ("100.50", "100.00", "101.00"))
        return {"price": last, "bid": bid, "ask": ask}

    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        query = parse_qs(split.query)
        routed = _route(split.path, query)
        provider, symbol = routed if routed else ("unknown", None)
        record = RecordedRequest(
            provider=provider,
            path=split.path,
            query=query,
            target=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self._seen[provider].append(record)
            fault = self._faults.get(provider)
            retry_after = self._retry_after.get(provider, "7")
            raw = self._raw.get(provider)
            release = self._release
            pair = self._pair_for(provider, symbol)
            values = dict(self._prices.get((provider, pair or ""), self._defaults(pair or "")))
        if routed is None:
            handler.send_body(404, b"Not Found", {"Content-Type": "text/plain"})
            return
        if raw is not None:
            handler.send_body(raw.status, raw.body, raw.headers)
            return
        if fault == "timeout":
            release.wait()  # until the test is done with us; the client has given up by then
            handler.close_connection = True
            return
        if fault == "drop":
            handler.close_connection = True
            return
        if fault == "hold":
            release.wait()
            fault = None
        if fault is not None and fault.isdigit():
            self._answer_status(handler, provider, int(fault), retry_after)
            return
        if fault == "api_error" or pair is None or symbol is None:
            status, error = API_ERRORS[provider]
            handler.send_body(status, json.dumps(error).encode())
            return
        if fault == "malformed":
            handler.send_body(200, b'{"error": [], "result": {"XXBTZUSD": {"a": ["600')
            return
        if fault in FAULT_VALUES:
            values = dict.fromkeys(values, FAULT_VALUES[fault])
        body = self._ticker(provider, symbol, values, fault)
        if fault == "trickle":
            self._trickle(handler, body, release)
            return
        handler.send_body(200, body)

    @staticmethod
    def _pair_for(provider: str, symbol: str | None) -> str | None:
        if symbol is None:
            return None
        if provider == "kraken":
            market = KRAKEN_MARKETS.get(symbol)
            return market[0] if market else None
        markets = {
            "coinbase": COINBASE_MARKETS,
            "bitstamp": BITSTAMP_MARKETS,
            "binance": BINANCE_MARKETS,
            "gemini": GEMINI_MARKETS,
        }.get(provider, {})
        return markets.get(symbol)

    @staticmethod
    def _answer_status(
        handler: _Handler, provider: str, status: int, retry_after: str | None
    ) -> None:
        headers: dict[str, str] = {}
        if status in (418, 429):
            body = json.dumps(RATE_LIMIT_BODIES[provider]).encode()
            if retry_after is not None:
                headers["Retry-After"] = retry_after
        elif 300 <= status < 400:
            body = b""
            headers["Location"] = "http://127.0.0.1:9/elsewhere"
        elif status >= 500:
            # What a CDN in front of an exchange sends: HTML, not the API's JSON.
            body = f"<html><body><h1>{status} Server Error</h1></body></html>".encode()
            headers["Content-Type"] = "text/html"
        else:
            body = json.dumps(API_ERRORS[provider][1]).encode()
        handler.send_body(status, body, headers)

    @staticmethod
    def _ticker(provider: str, symbol: str, values: dict[str, str], fault: str | None) -> bytes:
        last, bid, ask = values["price"], values["bid"], values["ask"]
        numbers: dict[str, str] = {}
        if fault == "number":  # the same digits, unquoted: a JSON number rather than a string
            numbers = {f"@{i}@": v for i, v in enumerate((last, bid, ask))}
            last, bid, ask = numbers
        body: Any
        if provider == "kraken":
            key = KRAKEN_MARKETS[symbol][1]
            body = {
                "error": [],
                "result": {
                    key: {
                        "a": [ask, "1", "1.000"],
                        "b": [bid, "2", "2.000"],
                        "c": [last, "0.00150000"],
                        "v": ["812.10154873", "1930.51318563"],
                        "p": [last, last],
                        "t": [15123, 38009],
                        "l": [bid, bid],
                        "h": [ask, ask],
                        "o": last,
                    }
                },
            }
        elif provider == "coinbase":
            body = {
                "ask": ask,
                "bid": bid,
                "volume": "8425.27934096",
                "trade_id": 86326522,
                "price": last,
                "size": "0.00698254",
                "time": "2026-01-01T12:00:00.123456Z",
                "rfq_volume": "123.122",
            }
        elif provider == "bitstamp":
            body = {
                "timestamp": "1767268800",
                "open": last,
                "high": ask,
                "low": bid,
                "last": last,
                "volume": "1587.77151208",
                "vwap": last,
                "bid": bid,
                "ask": ask,
                "side": "0",
                "open_24": last,
                "percent_change_24": "0.12",
            }
        elif provider == "binance":
            body = {
                "symbol": symbol,
                "bidPrice": bid,
                "bidQty": "3.41000000",
                "askPrice": ask,
                "askQty": "0.12000000",
            }
        else:
            base = symbol[:3].upper()
            quote = symbol[3:].upper()
            body = {
                "bid": bid,
                "ask": ask,
                "volume": {base: "1224.35", quote: "73461075.20", "timestamp": 1767268800000},
                "last": last,
            }
        if fault == "missing":
            target = body["result"][KRAKEN_MARKETS[symbol][1]] if provider == "kraken" else body
            del target[PRICE_FIELD[provider]]
        if fault == "shape":
            body = [body]
        text = json.dumps(body)
        for placeholder, digits in numbers.items():
            text = text.replace(json.dumps(placeholder), digits)
        return text.encode()

    @staticmethod
    def _trickle(handler: _Handler, body: bytes, release: threading.Event) -> None:
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.flush()
            for index in range(len(body)):
                if release.wait(TRICKLE_INTERVAL):
                    break
                handler.wfile.write(body[index : index + 1])
                handler.wfile.flush()
        except (ConnectionError, TimeoutError):
            pass
        handler.close_connection = True


def refused_url() -> str:
    """An http://127.0.0.1:<port> where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def fake_exchanges() -> Iterator[FakeExchanges]:
    """A running fake exchanges server; stopped (and blocked handlers released) at teardown."""
    with FakeExchanges() as fake:
        yield fake
