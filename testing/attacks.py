"""Attack clients for the server tests and bench/body_flood.py: one huge multipart body, and a
prober that keeps asking /health/live on its own thread to see whether others are still served."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

MIB = 1024 * 1024


def multipart_flood(
    port: int, path: str, size: int, *, chunked: bool = False, timeout: float = 30
) -> str:
    """POST ``size`` bytes of one multipart field; the server's status line, or how it hung up."""
    boundary = b"flood"
    head = b'--flood\r\nContent-Disposition: form-data; name="f"\r\n\r\n'
    tail = b"\r\n--flood--\r\n"
    framing = (
        b"Transfer-Encoding: chunked\r\n"
        if chunked
        else b"Content-Length: %d\r\n" % (len(head) + size + len(tail))
    )
    block = b"a" * MIB
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(
                b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary="
                + boundary
                + b"\r\n"
                + framing
                + b"\r\n"
            )
            for piece in [head, *([block] * (size // MIB)), tail]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer (if any) is what counts
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0].decode() or "closed"
        except ConnectionResetError:
            return "reset"


class Prober:
    """Another client asking /health/live over and over, on its own thread: its latencies."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.answered = threading.Condition()
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.done.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/health/live").status_code
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                with self.answered:
                    self.latencies.append(time.perf_counter() - started)
                    self.answered.notify_all()
                if status != 200:
                    self.failures.append(f"status {status}")

    def wait_for_answers(self, count: int, timeout: float = 30) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: len(self.latencies) >= count, timeout)


@contextmanager
def probing(base_url: str, *, strict: bool = True) -> Iterator[Prober]:
    """A prober running for the block; ``strict``: every probe must have been answered 200."""
    prober = Prober(base_url)
    thread = threading.Thread(target=prober.run, daemon=True)
    thread.start()
    try:
        yield prober
    finally:
        prober.done.set()
        thread.join(timeout=60)
    assert not strict or not prober.failures, prober.failures[:5]
