"""A JSON-RPC forwarder between the watcher and a real node, for timing the world our way.

Real peers are not polite: a block arrives between two of our calls, a node fails in the middle
of a poll. The interposer is a real HTTP server on 127.0.0.1 that forwards every request to the
node unchanged, counts calls by method, and runs a test's hook before forwarding a chosen call
(``before("getmempoolentry", mine_a_block)``), so such an interleaving happens deterministically
on the real node instead of being imitated.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx


class Refused(Exception):
    """Raised by a hook: the call is answered 503 (a node failing) instead of forwarded."""


class MethodNotFound(Exception):
    """Raised by a hook: the call is answered with JSON-RPC error -32601, as a node that lacks
    the method (an older or differently built client) answers."""


class RpcInterposer:
    def __init__(self, node_url: str) -> None:
        parts = urlsplit(node_url)
        self._target = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
        self._auth = (parts.username or "", parts.password or "")
        self._userinfo = f"{parts.username}:{parts.password}@" if parts.username else ""
        self.calls: Counter[str] = Counter()
        self._hooks: dict[str, list[Callable[[list], None]]] = {}
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30)
        interposer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body)
                try:
                    interposer._before(request)
                except Refused:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                except MethodNotFound:
                    method = request.get("method")
                    error = {"code": -32601, "message": f"the method {method} does not exist"}
                    reply = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "error": error})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply.encode())
                    return
                answer = interposer._client.post(
                    interposer._target.rstrip("/") + self.path,
                    content=body,
                    auth=interposer._auth,
                    headers={"Content-Type": "application/json"},
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._userinfo}127.0.0.1:{self._server.server_port}"

    def before(self, method: str, hook: Callable[[list], None], *, once: bool = True) -> None:
        """Run ``hook(params)`` before forwarding the next call of ``method`` (``"*"``: of any
        method; every call when ``once`` is False)."""

        def run(params: list) -> None:
            if once:
                self._hooks[method].remove(run)
            hook(params)

        with self._lock:
            self._hooks.setdefault(method, []).append(run)

    def _before(self, request: dict) -> None:
        method = request.get("method", "")
        with self._lock:
            self.calls[method] += 1
            hooks = list(self._hooks.get(method, [])) + list(self._hooks.get("*", []))
        for hook in hooks:
            hook(request.get("params") or [])

    def start(self) -> RpcInterposer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


@contextmanager
def interposed(node_url: str) -> Iterator[RpcInterposer]:
    interposer = RpcInterposer(node_url).start()
    try:
        yield interposer
    finally:
        interposer.close()
