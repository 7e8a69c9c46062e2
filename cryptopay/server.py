"""What the HTTP server adds in front of Django: body limits enforced before anything reads a body,
and a deadline on request headers (slowloris). ``manage.py serve`` runs uvicorn with both.

Why uvicorn and this module rather than daphne: Twisted (under daphne) reads a whole request body,
and parses a form body into memory, before the application sees the request and has no cap: one
300 MiB multipart POST to ``/health/live`` took the process to 3.7 GiB (bench/body_flood.py). uvicorn hands
the body over in chunks with back-pressure, so nothing is read that the application does not ask
for; it has no body cap of its own, hence ``BodyLimitMiddleware``. Its h11 protocol caps the size
of the request line and headers (``h11_max_incomplete_event_size``) but starts its keep-alive timer
only after a first response, and stops it at the first byte of the next request: a client that
trickles a header line every few seconds keeps its socket forever, hence ``HeaderTimeoutH11Protocol``.

``BodyLimitMiddleware`` rules, by path prefix (``BODY_RULES``): ``/api/`` takes JSON up to
``API_MAX_BODY_BYTES``; ``/admin/`` and the checkout's forms (``/pay/``) take form bodies up to
``DATA_UPLOAD_MAX_MEMORY_SIZE``; every other route is GET-only and takes no body. A request over
its rule is answered (413, or 415 for a non-JSON body under ``/api/``) in the API's error shape,
with ``Connection: close``, before Django sees a byte of it: from ``Content-Length`` up front, or
by counting the chunks of a chunked body as they arrive. A body within its rule is read whole on
the event loop before Django's thread starts on the request (``read_body``).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import h11
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol

from accounts.api_errors import INVALID_REQUEST, error_body

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class BodyRule:
    prefix: str
    setting: str  # the settings name of the cap (read per request: tests override settings)
    json_only: bool = False

    @property
    def max_bytes(self) -> int:
        return int(getattr(settings, self.setting))


BODY_RULES = (
    BodyRule("/api/", "API_MAX_BODY_BYTES", json_only=True),
    BodyRule("/admin/", "DATA_UPLOAD_MAX_MEMORY_SIZE"),
    BodyRule("/pay/", "DATA_UPLOAD_MAX_MEMORY_SIZE"),
)


def body_rule(path: str) -> BodyRule | None:
    """The rule of ``path``; None: the route takes no body."""
    return next((rule for rule in BODY_RULES if path.startswith(rule.prefix)), None)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value
    return None


def _is_json(content_type: bytes | None) -> bool:
    media_type = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(error_type=INVALID_REQUEST, code=code, message=message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The unread body is still on the wire: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: request bodies within their route's rule, or an error before Django reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_length = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        try:
            length = int(raw_length) if raw_length is not None else 0
        except ValueError:
            await _reject(send, 400, "bad_request", "Content-Length is not a number.")
            return
        if not chunked and length <= 0:
            await self.app(scope, receive, send)
            return
        rule = body_rule(scope["path"])
        if rule is None:
            await _reject(send, 413, "payload_too_large", "This URL takes no request body.")
            return
        if rule.json_only and not _is_json(_header(scope, b"content-type")):
            await _reject(
                send, 415, "unsupported_media_type", "Request bodies must be application/json."
            )
            return
        limit = rule.max_bytes
        if length > limit:
            await _reject(send, 413, "payload_too_large", f"Request body exceeds {limit} bytes.")
            return
        try:
            body = await read_body(receive, limit)
        except ClientLeft:
            return  # before its body was complete: nobody to answer
        if body is None:
            await _reject(send, 413, "payload_too_large", f"Request body exceeds {limit} bytes.")
            return
        await self.app(scope, _replay(body, receive), send)


class ClientLeft(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, read here on the event loop before the application runs; None past
    ``limit``. Django runs in a worker thread that would otherwise wait on a slow client's body
    (a few such clients would hold every thread), and a chunked body has no length up front: it
    is counted as it arrives and refused at the cap before the application sees a byte."""
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body read up front in one message, then the client's own
    messages (its disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's line and headers, counted from the
    connection's first byte of that request (or from the connection for the first one): a client
    that has not sent complete headers by then is disconnected, however slowly it trickles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = settings.SERVER_HEADER_TIMEOUT.total_seconds()
        self.max_header_bytes = settings.SERVER_MAX_HEADER_BYTES
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes_fed = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's H11Protocol narrows asyncio's BaseTransport to Transport; kept as uvicorn has it
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        # Between requests the keep-alive timer runs; the next request's first byte stops it, and
        # its headers are then on the clock.
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        # h11 checks its size cap only while the headers are incomplete: headers arriving complete
        # in one read would pass whatever their size. Fed to it so that the cap plus one byte is
        # one piece, oversized headers are always incomplete at that point, and refused (400).
        while data and self.conn.their_state is h11.IDLE:
            room = self.max_header_bytes + 1 - self._header_bytes_fed
            if room <= 0:
                break
            piece, data = data[:room], data[room:]
            self._header_bytes_fed += len(piece)
            super().data_received(piece)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                data = b""  # refused, or upgraded to a WebSocket (whose client waits for the 101)
        if data:
            super().data_received(data)
        # Headers complete, or the transport now belongs to a WebSocket: the deadline is met.
        if self.conn.their_state is not h11.IDLE or self.transport.get_protocol() is not self:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_bytes_fed = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.info(
                "closing a connection from %s: no complete request headers within %s s",
                self.client[0] if self.client else "?",
                self.header_timeout,
            )
            self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """uvicorn's settings of the gateway (``manage.py serve``), from Django settings."""
    trusted = settings.TRUSTED_PROXIES
    return {
        "http": "cryptopay.server:HeaderTimeoutH11Protocol",
        # asyncio's own loop, the one bench/api_capacity.py measures: uvicorn's "auto" would take
        # uvloop, installed for the webhook sender (notifications/sender.py).
        "loop": "asyncio",
        # The sans-I/O implementation: uvicorn deprecates the legacy "websockets" one, and
        # bench/ws_fanout.py measures it at about half the server CPU per fan-out round.
        "ws": "websockets-sansio",
        "lifespan": "off",
        # Django's LOGGING (redaction, JSON lines) applies to uvicorn's loggers too.
        "log_config": None,
        "h11_max_incomplete_event_size": settings.SERVER_MAX_HEADER_BYTES,
        "timeout_keep_alive": int(settings.SERVER_KEEP_ALIVE.total_seconds()),
        "timeout_graceful_shutdown": int(settings.SERVER_GRACEFUL_SHUTDOWN.total_seconds()),
        # X-Forwarded-For/-Proto rewrite the client address only when they come from our proxy.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": ",".join(trusted) or None,
        "server_header": False,
    }


class WorkerSockets(list[socket.socket]):
    """The listening sockets of ``manage.py serve``'s worker processes: one per worker, all bound
    to the same address with ``SO_REUSEPORT``, so the kernel spreads new connections over the
    workers.

    uvicorn's own multi-worker mode listens on one socket shared by every worker, and asyncio
    accepts every pending connection in one go: the worker that wakes first takes a burst of
    keep-alive connections (a proxy's pool, a load generator's 16) and keeps them, while the
    others idle (bench/api_capacity.py saw all 16 on one of 2 workers, and 2 workers serve no more
    than 1). uvicorn hands this list to each worker it spawns, pickled: what the worker unpickles
    is a socket of its own, and with it the worker's tie to this process (``worker_start``). The
    parent's socket here is bound, never listening, so it holds the port without taking
    connections from the group."""

    def __init__(self, host: str, port: int) -> None:
        held = _reuse_port_socket(host, port)
        super().__init__([held])
        self.address = (host, held.getsockname()[1])  # the port the kernel chose for port 0

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        return worker_start, (*self.address, os.getpid())


def worker_start(host: str, port: int, parent: int) -> list[socket.socket]:
    """What a new worker unpickles first thing: its tie to the supervisor ``parent`` and its
    socket."""
    _stop_with_parent(parent)
    return worker_socket(host, port)


def worker_socket(host: str, port: int) -> list[socket.socket]:
    """A worker's own socket in the group (asyncio's server makes it listen)."""
    return [_reuse_port_socket(host, port)]


# prctl(2): PR_SET_PDEATHSIG. The standard library has no wrapper, and python-prctl builds
# against libcap for this one call.
_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> None:
    """SIGTERM (uvicorn's graceful shutdown) to this worker when the supervisor that spawned it
    dies, however it dies. Without it a SIGKILLed ``manage.py serve`` left its workers serving
    the port with the old code, and the next ``serve`` refused to start (port in use)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning("worker %s will outlive its supervisor: prctl failed", os.getpid())
        return
    if os.getppid() != parent:  # it died before the tie was made
        os.kill(os.getpid(), signal.SIGTERM)


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    # The protocol is named, not left at 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
    # on connections whose socket says IPPROTO_TCP, and an accepted socket inherits the listening
    # socket's number. With 0, every response of a multi-worker server waited for the client's
    # delayed ACK: about 40 ms per request on a keep-alive connection (bench/api_capacity.py).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock
