"""A fast webhook receiver in a process of its own (aiohttp, keep-alive), for throughput: the
threaded ``Receiver`` closes every connection (HTTP/1.0) and shares the caller's GIL, so it would
measure itself rather than the sender.

    with FastReceiver() as receiver:
        ...  # POST to receiver.url
        receiver.counts()  # {webhook id: requests}

Run directly it serves ``python -m testing.fast_receiver PORT``: POST anything → 200,
``GET /counts`` → the requests per ``Webhook-Id`` so far, with the first and last arrival
(``time.monotonic()``, comparable with the caller's on the same machine); ``GET /received`` →
how many distinct ids so far.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def serve(port: int) -> None:
    from aiohttp import web

    counts: Counter[str] = Counter()
    arrivals: dict[str, float] = {}  # first arrival per id
    span: dict[str, float | None] = {"first": None, "last": None}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        span["first"] = span["first"] or now
        span["last"] = now
        webhook_id = request.headers.get("Webhook-Id", "")
        counts[webhook_id] += 1
        arrivals.setdefault(webhook_id, now)
        return web.Response(body=b'{"received":true}', content_type="application/json")

    async def report(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"counts": counts, "arrivals": arrivals, **span}))

    async def received(request: web.Request) -> web.Response:
        return web.Response(text=str(len(counts)))

    async def reset(request: web.Request) -> web.Response:
        counts.clear()
        arrivals.clear()
        span.update(first=None, last=None)
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    app.router.add_get("/counts", report)
    app.router.add_get("/received", received)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class FastReceiver:
    def __init__(self) -> None:
        with socket.socket() as probe:  # a port free right now (the OS picks it)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None
        # One client, kept alive: httpx.get builds a client (and loads the CA bundle) per call,
        # milliseconds of CPU taken from the sender being measured at every poll.
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def __enter__(self) -> FastReceiver:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testing.fast_receiver", str(self.port)], cwd=ROOT
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.report()
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.client.close()

    def report(self) -> dict:
        return self.client.get("/counts").json()

    def counts(self) -> Counter[str]:
        return Counter(self.report()["counts"])

    def received(self) -> int:
        """How many distinct ids arrived: cheap to poll, unlike ``report`` whose size grows."""
        return int(self.client.get("/received").text)

    def reset(self) -> None:
        self.client.post("/reset")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
