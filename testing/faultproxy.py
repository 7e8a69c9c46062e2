"""A small fault-injecting TCP proxy for the chaos suite and benches (toxiproxy is not available).

It listens on 127.0.0.1 (an ephemeral port unless one is given) and forwards every connection to
a target ``host:port``. Its mode can be switched at any time from any thread:

* ``pass_through()``: bytes flow both ways untouched.
* ``latency(ms)``: every chunk, each way, is held ``ms`` milliseconds before it is forwarded (so
  a request/answer round trip costs at least 2 * ms); new connections wait ``ms`` to be opened.
* ``reset()``: every open connection is closed with an RST (SO_LINGER 0), and so is every new one
  as soon as it is accepted. Clients see ``ECONNRESET``.
* ``black_hole()``: connections are accepted (and open ones kept) but nothing is forwarded either
  way: clients hang until their own timeout.
* ``down()``: the listener is closed, so connecting is refused (``ECONNREFUSED``); open
  connections are reset. Any other mode opens the listener again on the same port.

Usage, from a test, a bench or a chaos scenario in the same process::

    with FaultProxy("127.0.0.1", 6379) as proxy:
        client = redis.Redis(port=proxy.port)
        proxy.black_hole()
        ...
        proxy.pass_through()

One thread runs an asyncio loop per proxy; switching modes is thread-safe and takes effect for
bytes already in flight at the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

CHUNK = 64 * 1024

PASS_THROUGH = "pass_through"
LATENCY = "latency"
RESET = "reset"
BLACK_HOLE = "black_hole"
DOWN = "down"


@dataclass(eq=False)
class _Link:
    """One proxied connection: the accepted client socket and the upstream socket."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST instead of a FIN: SO_LINGER on, linger time 0."""
    if writer is None or writer.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = port
        self.mode = PASS_THROUGH
        self.latency_ms = 0
        self.accepted = 0  # connections accepted since start, for tests and reports
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="faultproxy"
        )
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        # Wakes forwarders parked in a black hole when the mode changes.
        self._mode_changed: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._init)
        self._call(self._listen)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, scheme: str, rest: str = "") -> str:
        """``scheme://127.0.0.1:<port><rest>``, e.g. ``proxy.url("redis", "/0")``."""
        return f"{scheme}://{self.host}:{self.port}{rest}"

    # --- modes (thread-safe) --------------------------------------------------------------------

    def pass_through(self) -> None:
        self._set(PASS_THROUGH)

    def latency(self, ms: int) -> None:
        self._set(LATENCY, latency_ms=ms)

    def reset(self) -> None:
        self._set(RESET)

    def black_hole(self) -> None:
        self._set(BLACK_HOLE)

    def down(self) -> None:
        self._set(DOWN)

    def open_connections(self) -> int:
        return self._call(lambda: len(self._links))

    # --- inside the loop ------------------------------------------------------------------------

    def _call(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` (a coroutine function or a plain one) in the loop and wait for it."""

        async def run() -> Any:
            result = func()
            return await result if asyncio.iscoroutine(result) else result

        future: Future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=10)

    def _set(self, mode: str, *, latency_ms: int = 0) -> None:
        def apply() -> Any:
            self.mode, self.latency_ms = mode, latency_ms
            assert self._mode_changed is not None
            self._mode_changed.set()
            self._mode_changed = asyncio.Event()
            if mode in (RESET, DOWN):
                for link in list(self._links):
                    self._drop(link)
            if mode == DOWN:
                return self._close_listener()
            if self._server is None:
                return self._listen()
            return None

        self._call(apply)

    async def _init(self) -> None:
        self._mode_changed = asyncio.Event()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _shutdown(self) -> None:
        await self._close_listener()
        for link in list(self._links):
            self._drop(link)
        await asyncio.sleep(0)

    def _drop(self, link: _Link) -> None:
        _abort(link.client)
        _abort(link.upstream)
        for task in link.tasks:
            task.cancel()
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(client=writer)
        self._links.add(link)
        if self.mode == RESET:
            self._drop(link)
            return
        if self.mode == LATENCY and self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self._drop(link)  # the target refuses: the client sees a reset, as from a real hop
            return
        if link not in self._links:  # reset or down while connecting
            _abort(up_writer)
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                data = await source.read(CHUNK)
                if not data:
                    break
                await self._hold(data)
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        # One side finished: pass the EOF on and forget the link once both are done.
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()
        if all(task.done() or task is asyncio.current_task() for task in link.tasks):
            with contextlib.suppress(OSError):
                link.client.close()
                if link.upstream is not None:
                    link.upstream.close()
            self._links.discard(link)

    async def _hold(self, data: bytes) -> None:
        """Apply the current mode to one chunk before it is forwarded."""
        while self.mode == BLACK_HOLE:
            assert self._mode_changed is not None
            await self._mode_changed.wait()
        if self.mode == LATENCY and self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
