"""The bridge between uvicorn's event loop and Django's WSGI handler (cryptopay/wsgi_bridge.py),
driven as uvicorn drives it: a real event loop, the bridge's real thread pool, small WSGI
applications recording which thread did what."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from django.http import HttpResponse
from django.templatetags.static import static

from cryptopay.wsgi_bridge import WsgiBridge
from testing.servers import ROOT, asgi_server

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/api/v1/echo",
    "raw_path": b"/api/v1/echo",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


class Exchange:
    """What the client sent (in chunks) and what the bridge sent back, with the sending thread."""

    def __init__(self, *chunks: bytes, leaves: bool = False) -> None:
        self.incoming: list[dict[str, Any]] = [
            {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
            for index, chunk in enumerate(chunks)
        ]
        if leaves:
            self.incoming[-1]["more_body"] = True
            self.incoming.append({"type": "http.disconnect"})
        self.sent: list[MutableMapping[str, Any]] = []
        self.sending_threads: set[int] = set()
        self.on_send: Any = None

    async def receive(self) -> MutableMapping[str, Any]:
        return self.incoming.pop(0)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sending_threads.add(threading.get_ident())
        self.sent.append(message)
        if self.on_send is not None:
            self.on_send(message)

    def run(self, bridge: WsgiBridge) -> int:
        """Serve the request on a fresh event loop; the loop's thread."""

        async def serve() -> int:
            await bridge(dict(SCOPE), self.receive, self.send)
            return threading.get_ident()

        return asyncio.run(serve())

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class Recorded:
    """A WSGI application answering with ``answer(environ)`` and recording its thread and the
    thread that closed its response."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.app_thread: int | None = None
        self.close_thread: int | None = None
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        self.app_thread = threading.get_ident()
        start_response("201 Created", [("Content-Type", "application/json"), ("X-Seen", "yes")])
        iterable = self.answer(environ)
        recorder = self

        class Closing:
            streaming = getattr(iterable, "streaming", None)

            def __iter__(self) -> Iterator[bytes]:
                return iter(iterable)

            def close(self) -> None:
                recorder.close_thread = threading.get_ident()

        return Closing()


def test_given_a_body_in_chunks_and_an_in_memory_response_then_the_loop_sends_it_as_one_start_and_one_body():
    # given: a Django response (its content in memory) echoing the body it read
    def echo(environ: dict[str, Any]) -> HttpResponse:
        return HttpResponse(b"echo:" + environ["wsgi.input"].read())

    app = Recorded(echo)
    exchange = Exchange(b'{"amount": ', b'"19.99"}')

    # when
    loop_thread = exchange.run(WsgiBridge(app, threads=2))

    # then: the whole body reached the application, which ran on a pool thread
    assert exchange.body == b'echo:{"amount": "19.99"}'
    assert app.app_thread is not None and app.app_thread != loop_thread
    # and nothing was sent from that thread: one start and one body, both from the loop
    assert [m["type"] for m in exchange.sent] == ["http.response.start", "http.response.body"]
    assert exchange.sending_threads == {loop_thread}
    assert exchange.sent[0]["status"] == 201
    assert (b"x-seen", b"yes") in exchange.sent[0]["headers"]
    assert exchange.sent[1].get("more_body", False) is False
    # and the response was closed (Django's request_finished) on the request's own thread
    assert app.close_thread == app.app_thread


def test_given_a_streaming_response_then_each_chunk_reaches_the_client_before_the_next_is_made():
    # given: a response that makes its second chunk only once the first was sent
    first_sent = threading.Event()

    def stream(environ: dict[str, Any]) -> Iterator[bytes]:
        yield b"first;"
        # A bridge that buffered the whole response would never send the first chunk here.
        yield b"second" if first_sent.wait(timeout=5) else b"buffered"

    app = Recorded(stream)
    exchange = Exchange(b"")
    exchange.on_send = lambda message: (
        first_sent.set() if message.get("body") == b"first;" else None
    )

    # when
    loop_thread = exchange.run(WsgiBridge(app, threads=1))

    # then
    assert exchange.body == b"first;second"
    assert [m["type"] for m in exchange.sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
        "http.response.body",
    ]
    assert exchange.sent[-1] == {"type": "http.response.body", "body": b""}
    assert all(m.get("more_body") for m in exchange.sent[1:-1])
    # the sends happened on the loop (the thread handed each one over), the close on the thread
    assert exchange.sending_threads == {loop_thread}
    assert app.close_thread == app.app_thread != loop_thread


def test_given_a_client_that_leaves_during_its_body_then_the_application_never_runs():
    app = Recorded(lambda environ: [b"never"])
    exchange = Exchange(b'{"amount": ', leaves=True)

    exchange.run(WsgiBridge(app, threads=1))

    assert app.calls == 0
    assert exchange.sent == []


def test_given_an_application_that_fails_then_the_error_reaches_the_server_and_nothing_was_sent():
    # given: an application raising before it answers (uvicorn then answers 500 itself)
    def failing(environ: dict[str, Any], start_response: Any) -> Any:
        raise RuntimeError("boom")

    exchange = Exchange(b"")

    # when / then
    try:
        exchange.run(WsgiBridge(failing, threads=1))
    except RuntimeError as error:
        assert str(error) == "boom"
    else:
        raise AssertionError("the application's error was swallowed")
    assert exchange.sent == []


@pytest.mark.django_db(transaction=True)
def test_given_the_gateway_when_the_checkout_script_is_fetched_then_it_streams_through_the_bridge_whole(
    tmp_path,
):
    # given: the production server; a static file is a streaming response (whitenoise's file
    # response), sent from its thread chunk by chunk
    script = ROOT / "payments" / "static" / "payments" / "checkout.js"

    # when
    with asgi_server(tmp_path) as server:
        answer = httpx.get(f"{server.base_url}{static('payments/checkout.js')}", timeout=10)

    # then: every byte, as the file has them
    assert answer.status_code == 200, answer.text[:300]
    assert answer.content == script.read_bytes()
    assert len(answer.content) > 8192  # more than one of the file response's chunks
