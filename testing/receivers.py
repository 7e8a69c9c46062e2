"""A small real webhook receiver on 127.0.0.1 for the notification tests and the bench.

A ``ThreadingHTTPServer`` in a thread on an ephemeral port that records every request (headers,
raw body, arrival time) and answers from a script:

* ``answer(500, 500, 200)`` queues status codes, one per request; then ``default_status``;
* ``down()`` stops listening (connections are refused), ``up()`` listens again on the same port
  (``SO_REUSEADDR``, which ``HTTPServer`` sets);
* ``hang()`` makes requests wait on an ``Event`` (no answer) until ``release()`` or ``stop()``;
* ``delay`` slows every answer a little (a kill then lands mid-batch).

    with Receiver() as receiver:
        endpoint, secret = webhook_endpoint_create(owner=..., url=receiver.url)
        ...
        receiver.wait_for(lambda r: len(r.ids()) >= 3)
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request arrived
    status: int  # what the receiver answered (0: it hung and never answered)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def signature(self) -> str:
        return self.headers.get("cryptopay-signature", "")


class Receiver:
    def __init__(
        self,
        *,
        default_status: int = 200,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        """``host``: another loopback address (127.0.0.2) tells which address a sender reached;
        ``tls``: a server context, to serve HTTPS; ``headers``: sent with every answer (a
        ``Set-Cookie``); ``on_request``: called as each request arrives, before it is answered
        (a test's clock moves forward as the receiver takes its time)."""
        self.headers = dict(headers or {})
        self.on_request = on_request
        self.default_status = default_status
        self.delay = delay
        self.host = host
        self.port = port
        self.tls = tls
        self._lock = threading.Lock()
        self._statuses: deque[int] = deque()
        self._requests: list[Received] = []
        self._hanging = False
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Receiver:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again, on the same port once it had one)."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer((self.host, self.port), self._handler())
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening: connections to the port are refused until ``up()``."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stop(self) -> None:
        self.release()
        self.down()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/hooks"

    # --- script -------------------------------------------------------------------------------

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these codes, in order (then ``default_status``)."""
        with self._lock:
            self._statuses.extend(statuses)

    def hang(self) -> None:
        """Hold every request open, without an answer, until ``release()``."""
        self._release.clear()
        self._hanging = True

    def release(self) -> None:
        self._hanging = False
        self._release.set()

    # --- what arrived -------------------------------------------------------------------------

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def ids(self) -> list[str]:
        return [request.webhook_id for request in self.requests]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver on {self.port}: condition not met in {timeout} s")
            time.sleep(0.01)

    # --- the handler --------------------------------------------------------------------------

    def _next_status(self) -> int:
        with self._lock:
            return self._statuses.popleft() if self._statuses else self.default_status

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes, at: float, status: int):
        received = Received(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
            at=at,
            status=status,
        )
        with self._lock:
            self._requests.append(received)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver._hanging:
                    receiver._record(self, body, at, 0)
                    receiver._release.wait(timeout=60)
                    self.close_connection = True
                    return
                status = receiver._next_status()
                receiver._record(self, body, at, status)
                if receiver.on_request is not None:
                    receiver.on_request()
                if receiver.delay:
                    time.sleep(receiver.delay)
                payload = b'{"received":true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        return Handler


def stripe_verified(received: Received, secret: str, *, tolerance: int = 300) -> bool:
    """Check a request's signature with Stripe's own verifier (our header is Stripe's format):
    what a merchant's existing Stripe-style code would do with it."""
    import stripe

    stripe.WebhookSignature.verify_header(
        received.body.decode(), received.signature, secret, tolerance=tolerance
    )
    return True
