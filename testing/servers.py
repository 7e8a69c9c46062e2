"""Real ASGI servers running the gateway in their own processes, for tests that cross process
boundaries: WebSocket caps shared through Redis, the browser end-to-end test, the server's limits.
``gateway`` is what production runs (``manage.py serve``: uvicorn with cryptopay/server.py);
``daphne`` and bare ``uvicorn`` are kept for comparisons (bench/body_flood.py).

The server gets this process's environment (Redis prefixes of the test run) pointed at the test
database, so data the test commits is what the server reads.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen, TimeoutExpired

import httpx
from django.conf import settings
from django.db import connection

from testing.nodes import free_port, spawn

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Server:
    process: Popen
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def peak_rss_bytes(self) -> int:
        """The high-water mark of resident memory, summed over the server and its workers."""
        return sum(_proc_status_kib(pid, "VmHWM") for pid in process_tree(self.process.pid)) * 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants, from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                queue.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _proc_status_kib(pid: int, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # exited meanwhile
        return 0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def served_database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{connection.settings_dict['NAME']}"


def server_command(kind: str, port: int) -> list[str]:
    if kind == "gateway":
        return [sys.executable, str(ROOT / "manage.py"), "serve", "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
    if kind == "daphne":
        return [
            str(BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "cryptopay.asgi:application",
        ]
    if kind == "uvicorn":
        return [
            str(BIN / "uvicorn"), "cryptopay.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--ws", "websockets", "--log-level", "warning", "--lifespan", "off",
        ]  # fmt: skip
    raise ValueError(f"unknown server {kind!r}")


def server_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    return {
        # One web worker unless a test asks for more (production runs one per core): a test's
        # server is one process, whose pid, log and connections the test can follow.
        "WEB_CONCURRENCY": "1",
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cryptopay.settings",
        "DATABASE_URL": served_database_url(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        **(env or {}),
    }


def _stop(process: Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def dispatcher(log_dir: Path, *, env: dict[str, str] | None = None) -> Iterator[Popen]:
    """``manage.py run_dispatcher``: the queues to browsers and webhooks, as deployed."""
    command = [sys.executable, str(ROOT / "manage.py"), "run_dispatcher"]
    process = spawn(command, log=log_dir / "dispatcher.log", env=server_environment(env))
    try:
        yield process
    finally:
        _stop(process)


@contextmanager
def asgi_server(
    log_dir: Path,
    *,
    kind: str = "gateway",
    env: dict[str, str] | None = None,
    start_timeout: float = 30,
) -> Iterator[Server]:
    """Start a server on a free port, wait until it answers HTTP, stop it afterwards."""
    port = free_port()
    log = log_dir / f"{kind}-{port}.log"
    process = spawn(server_command(kind, port), log=log, env=server_environment(env))
    server = Server(process=process, port=port, log=log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited with {process.returncode}:\n{server.output()}")
            with suppress(httpx.TransportError):
                httpx.get(f"{server.base_url}/health/live", timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{kind} did not answer within {start_timeout:g} s:\n{server.output()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)


def worker_pids(server_pid: int, workers: int) -> list[int]:
    """The processes serving requests: the server itself with one worker, else its children
    started by multiprocessing's spawn (not its resource tracker)."""
    if workers == 1:
        return [server_pid]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def wait_for_workers(server_pid: int, workers: int, timeout: float = 180) -> list[int]:
    """The worker pids once every one of them serves: the server answers as soon as the first
    spawned worker does, so each is waited for until it sleeps in its event loop (epoll), twice
    in a row, after setting Django up."""
    deadline = time.monotonic() + timeout
    settled = 0
    while time.monotonic() < deadline:
        pids = worker_pids(server_pid, workers)
        waiting = [pid for pid in pids if "epoll" in _read(f"/proc/{pid}/wchan")]
        settled = settled + 1 if len(pids) == workers and len(waiting) == workers else 0
        if settled >= 2:
            return pids
        time.sleep(0.5)
    raise RuntimeError(f"{workers} workers of server {server_pid} did not all start")


def established_connections(pid: int, port: int) -> int:
    """TCP connections to local ``port`` that process ``pid`` holds open (from /proc: its socket
    inodes among the established IPv4 connections of that port)."""
    inodes = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    count = 0
    for line in _read(f"/proc/{pid}/net/tcp").splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
            count += 1
    return count


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
