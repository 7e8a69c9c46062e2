"""Web workers and their database pools: one worker per core by default, workers x pool within
PostgreSQL's max_connections minus the reserve for the other processes, as many request threads
per worker as its pool has connections, and connections spread over the workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from cryptopay.server import WorkerSockets, worker_socket
from cryptopay.settings import database_pool_max
from testing.servers import asgi_server, established_connections, wait_for_workers

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json
import django
django.setup()
from django.conf import settings
print(json.dumps({
    "workers": settings.SERVER_WORKERS,
    "pool_max": settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"],
    "threads": settings.SERVER_THREADS,
}))
"""


def probe(**given: str) -> dict[str, int]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name
        not in (
            "WEB_CONCURRENCY",
            "CRYPTOPAY_WEB_WORKERS",
            "CRYPTOPAY_DB_POOL_MAX",
            "CRYPTOPAY_WEB_THREADS",
        )
    }
    env |= {"DJANGO_SETTINGS_MODULE": "cryptopay.settings", **given}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("workers", "expected"), [(1, 16), (2, 16), (5, 14), (8, 8), (35, 2), (64, 2)]
)
def test_the_pool_is_the_workers_share_of_the_connections_capped_at_16(workers, expected):
    assert database_pool_max(workers=workers, max_connections=100, reserved=30) == expected


def test_workers_times_pool_stays_within_the_share_while_a_pool_of_two_fits():
    for workers in range(1, 36):
        pool = database_pool_max(workers=workers, max_connections=100, reserved=30)
        assert workers * pool <= 100 - 30, workers


def test_given_no_worker_count_then_production_runs_one_worker_per_core():
    found = probe()

    assert found["workers"] == os.cpu_count()
    assert found["pool_max"] == database_pool_max(
        workers=os.cpu_count() or 1, max_connections=100, reserved=30
    )


def test_given_web_concurrency_then_the_pool_is_sized_from_it():
    found = probe(WEB_CONCURRENCY="5", CRYPTOPAY_DB_MAX_CONNECTIONS="200")

    assert found == {"workers": 5, "pool_max": 16, "threads": 4}  # 170 // 5 = 34, capped
    assert probe(WEB_CONCURRENCY="20")["pool_max"] == 3  # (100 - 30) // 20


def test_an_explicit_pool_size_wins():
    assert probe(WEB_CONCURRENCY="4", CRYPTOPAY_DB_POOL_MAX="3")["pool_max"] == 3


def test_each_worker_runs_four_request_threads_and_never_more_than_its_pool_has_connections():
    assert probe(WEB_CONCURRENCY="2")["threads"] == 4
    assert probe(WEB_CONCURRENCY="20")["threads"] == 3
    assert probe(WEB_CONCURRENCY="4", CRYPTOPAY_DB_POOL_MAX="3")["threads"] == 3
    assert probe(WEB_CONCURRENCY="4", CRYPTOPAY_WEB_THREADS="5")["threads"] == 5


@pytest.mark.django_db(transaction=True)
def test_given_two_workers_when_16_keep_alive_clients_connect_at_once_then_both_workers_hold_some(
    tmp_path,
):
    # Given: the production server with two workers.
    env = {"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with asgi_server(tmp_path, env=env, start_timeout=180) as server, ExitStack() as stack:
        workers = wait_for_workers(server.process.pid, 2)
        # When: 16 clients connect at once, each then sends a request and reads its answer.
        clients = [
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=30))
            for _ in range(16)
        ]
        for client in clients:
            client.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200"), "every connection is served"
        held = {pid: established_connections(pid, server.port) for pid in workers}

    # Then: the kernel spread them over both workers. A fair coin per connection leaves one
    # worker fewer than 2 about once in 2,000 runs; the shared socket gave 15 and 1, then 16 and 0.
    assert sum(held.values()) == 16, held
    assert all(count >= 2 for count in held.values()), held


def test_a_workers_connections_send_without_waiting_for_acks():
    # Given: a worker's listening socket in the group of the parent's, served by asyncio as
    # uvicorn serves it.
    parents = WorkerSockets("127.0.0.1", 0)
    (listening,) = worker_socket(*parents.address)
    options: list[int] = []

    async def scenario() -> None:
        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted = writer.get_extra_info("socket")
            options.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=listening)
        async with server:
            port = listening.getsockname()[1]
            # When: a client connects.
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            while not options:
                await asyncio.sleep(0)
            writer.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        for sock in (*parents, listening):
            sock.close()

    # Then: Nagle's algorithm is off on the accepted connection, so a response written in two
    # parts never waits for the client's delayed ACK (about 40 ms per keep-alive request).
    assert options == [1]


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its reaper has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.django_db(transaction=True)
def test_given_two_workers_when_their_supervisor_is_killed_then_they_stop_and_free_the_port(
    tmp_path,
):
    # Given: the production server with two workers.
    env = {"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with asgi_server(tmp_path, env=env, start_timeout=180) as server:
        workers = wait_for_workers(server.process.pid, 2)

        # When: its supervisor is SIGKILLed (an OOM kill, kill -9 by an operator).
        server.process.kill()
        server.process.wait(timeout=30)

        # Then: the workers shut down too, instead of serving the port on their own.
        deadline = time.monotonic() + 60
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [pid for pid in workers if running(pid)]
        for pid in orphans:  # none outlives a failed run
            os.kill(pid, signal.SIGKILL)
        assert not orphans
        with socket.socket() as successor:  # the next server can listen there
            successor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            successor.bind(("127.0.0.1", server.port))
            successor.listen()
