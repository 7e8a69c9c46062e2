"""Django's WSGI handler served over ASGI from a fixed pool of threads, with no call from a
request's thread back into the event loop unless its response streams.

a2wsgi's ``WSGIMiddleware`` (which this replaces; its ``build_environ`` is still used) hands every
message across threads one at a time: the thread asks the loop for the request body, then for the
response's start, its body and its end, each time waiting for the loop to take it. That is four
handovers of the GIL and four thread wake-ups per request, paid by every request whatever it does.
Measured side by side on one worker (bench/api_capacity.py's minimal and create loads, 16
clients, 4 alternating rounds, medians): the one-row insert went from 340 to 452 requests/s
(2,950 to 2,200 µs of worker CPU each), a payment create from 188 to 223/s (5,090 to 4,310 µs).

Here the body is read on the loop before the thread starts (``BodyLimitMiddleware`` has already
read it within its route's cap, and hands it over in one message), and a response that does not
stream (every ``HttpResponse``, whose content is already in memory) comes back as the thread's
result: the loop writes it. Only a streaming response (a file, a ``StreamingHttpResponse``) is
sent chunk by chunk from its thread, each chunk waiting for the loop to take it, so a slow client
holds back its producer and nothing is buffered whole. Whatever the response, its ``close()``
(Django's ``request_finished``: the request's database connection goes back to the pool) runs on
the request's own thread.

Only behind ``BodyLimitMiddleware``: a body is read whole into memory, so its cap must be enforced
before it reaches here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import itertools
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, cast

from a2wsgi.wsgi import build_environ

from cryptopay.server import ClientLeft, Message, Receive, Scope, Send, read_body

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WsgiApp = Callable[[dict[str, Any], Callable[..., Callable[[bytes], None]]], Iterable[bytes]]


class WsgiBridge:
    """An ASGI application (HTTP only) running ``app`` in a pool of ``threads`` threads."""

    def __init__(self, app: WsgiApp, *, threads: int) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="WSGI")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"WsgiBridge serves HTTP, not {scope['type']}")
        try:
            # Uncapped here: BodyLimitMiddleware, in front, has enforced the route's cap.
            body = await read_body(receive, sys.maxsize)
        except ClientLeft:
            return  # before its body was complete: nobody to answer
        assert body is not None  # None only past the limit
        loop = asyncio.get_running_loop()
        exchange = _Exchange(loop=loop, send=send)
        environ = cast(dict[str, Any], build_environ(cast(Any, scope), cast(Any, io.BytesIO(body))))
        context = contextvars.copy_context()
        answered = await loop.run_in_executor(
            self.executor, functools.partial(context.run, exchange.run, self.app, environ)
        )
        if answered is not None:
            start, content = answered
            await send(start)
            await send({"type": "http.response.body", "body": content})


def _buffered(iterable: Iterable[bytes]) -> bool:
    """Is the whole response already in memory? Django's responses say whether they stream; a
    list or tuple is complete; any other iterable may produce as it goes."""
    return isinstance(iterable, list | tuple) or getattr(iterable, "streaming", None) is False


class _Exchange:
    """One request's response, as its thread produces it."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, send: Send) -> None:
        self.loop = loop
        self.send = send
        self.start: Message | None = None
        self.started = False  # the start has gone to the client (a streaming response)
        self.written: list[bytes] = []  # through the legacy write() callable, before the body

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.started:
            raise exc_info[1].with_traceback(exc_info[2])  # too late to replace what was sent
        self.start = {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [
                (name.strip().encode("latin1").lower(), value.strip().encode("latin1"))
                for name, value in headers
            ],
        }
        return self.written.append

    def run(self, app: WsgiApp, environ: dict[str, Any]) -> tuple[Message, bytes] | None:
        """In the request's thread: the start message and the whole body of a response that is
        in memory, for the loop to send; None once a streaming response has been sent."""
        iterable = app(environ, self.start_response)
        try:
            if _buffered(iterable):
                content = b"".join([*self.written, *iterable])
                return self._start(), content
            self._send(self._start())
            self.started = True
            for chunk in itertools.chain(self.written, iterable):
                if chunk:
                    self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._send({"type": "http.response.body", "body": b""})
            return None
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def _start(self) -> Message:
        if self.start is None:
            raise RuntimeError("the WSGI application returned without calling start_response")
        return self.start

    def _send(self, message: Message) -> None:
        asyncio.run_coroutine_threadsafe(_sending(self.send, message), self.loop).result()


async def _sending(send: Send, message: Message) -> None:
    await send(message)
