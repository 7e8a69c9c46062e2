"""Recovery from a lost database, over real HTTP, on real PostgreSQL.

daphne runs the gateway in its own process and reaches PostgreSQL through the fault proxy
(testing/faultproxy.py). Its pool holds several connections when every one of them is killed
(``pg_terminate_backend``, as a failover or a restart does) or the database goes away and comes
back; then ``/health/ready`` is asked one request at a time, as a load balancer does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection, transaction

from testing.faultproxy import FaultProxy
from testing.servers import Server, asgi_server, served_database_url

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
POOLED = 4  # connections the server's pool holds when the database is lost
RECONNECT_ATTEMPTS = 5  # failed reconnections the outage lasts for


def database_name() -> str:
    return connection.settings_dict["NAME"]


def server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database_name()],
        )
        return cursor.fetchone()[0]


def terminate_server_connections() -> int:
    """Kill every backend of the test database but this one (ours: only this test uses it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [database_name()],
        )
        return cursor.fetchone()[0]


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    db = settings.DATABASES["default"]
    with FaultProxy(db["HOST"], int(db["PORT"])) as proxy:
        yield proxy


@pytest.fixture
def server(proxy: FaultProxy, tmp_path: Path) -> Iterator[Server]:
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{database_name()}"
    env = {"DATABASE_URL": url, "CRYPTOPAY_DB_POOL_MIN": str(POOLED)}
    with asgi_server(tmp_path, env=env) as server:
        yield server


def ready(server: Server, timeout: float = 30) -> int:
    return httpx.get(f"{server.base_url}/health/ready", timeout=timeout).status_code


def pool_filled(server: Server) -> None:
    """Answer a few requests at once so the pool holds its connections; wait until it does."""
    threads = [threading.Thread(target=ready, args=(server,)) for _ in range(POOLED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 10
    while server_connections() < POOLED:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.05)


def first_success(server: Server, *, since: float, limit: float = 40) -> tuple[float, list[int]]:
    """Ask /health/ready one request at a time until it answers 200. Returns the seconds from
    ``since`` to that answer and every status seen on the way."""
    statuses: list[int] = []
    while time.monotonic() - since < limit:
        statuses.append(ready(server))
        if statuses[-1] == 200:
            return time.monotonic() - since, statuses
    raise AssertionError(f"no 200 within {limit} s: {statuses}")


def test_given_every_pooled_connection_killed_when_ready_is_asked_then_the_first_answer_is_200_within_a_second(
    server,
):
    # Given: the server's pool holds several connections, all working.
    assert ready(server) == 200
    pool_filled(server)

    # When: every one of them is killed at once (a failover, a restart).
    killed_at = time.monotonic()
    assert terminate_server_connections() >= POOLED

    # Then: the first request already succeeds, within a second.
    elapsed, statuses = first_success(server, since=killed_at)
    print(f"\nmass termination: first 200 after {elapsed:.3f} s, statuses {statuses}")
    assert statuses == [200]
    assert elapsed < 1.0


def test_given_the_database_unreachable_when_it_accepts_connections_again_then_ready_is_200_within_a_second(
    server, proxy
):
    # Given: a filled pool; then the database goes away (every connection, open or new, is cut).
    assert ready(server) == 200
    pool_filled(server)
    proxy.reset()
    assert ready(server) == 503
    attempts_before = proxy.accepted
    answers: list[tuple[float, int]] = []

    def ask_one_at_a_time() -> None:
        while not answers or answers[-1][1] != 200:
            status = ready(server)
            answers.append((time.monotonic(), status))

    asking = threading.Thread(target=ask_one_at_a_time)
    asking.start()
    # The outage lasts until the pool has tried to reconnect several times: a pool that backs off
    # (1, 2, 4, 8 s…) is by then waiting longer than a second before its next try.
    deadline = time.monotonic() + 60
    while proxy.accepted - attempts_before < RECONNECT_ATTEMPTS:
        assert time.monotonic() < deadline, "the server's pool stopped trying to reconnect"
        time.sleep(0.05)

    # When: the database accepts connections again.
    back_at = time.monotonic()
    proxy.pass_through()
    asking.join(timeout=60)

    # Then: /health/ready answers 200 within a second of that.
    answered_at, status = answers[-1]
    print(f"\ndatabase back: first 200 after {answered_at - back_at:.3f} s")
    assert status == 200
    assert answered_at - back_at < 1.0


def session(mode: str, value: str) -> subprocess.Popen:
    """A Django process with half-second server-side limits, on the test database."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cryptopay.settings",
        "DATABASE_URL": served_database_url(),
        "CRYPTOPAY_DB_STATEMENT_TIMEOUT_SECONDS": "0.5",
        "CRYPTOPAY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "0.5",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.resilience.database_session", mode, value],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_given_a_statement_running_past_the_statement_timeout_then_the_server_cancels_it():
    process = session("sleep", "5")
    out, _ = process.communicate(timeout=30)

    assert json.loads(out)["error"] == "OperationalError"
    assert "statement timeout" in json.loads(out)["message"]


def test_given_a_transaction_abandoned_holding_a_lock_then_the_server_ends_it_and_frees_the_lock():
    # Given: another process holds a lock in a transaction its thread no longer drives.
    process = session("abandon", "15150")
    assert process.stdout is not None
    assert json.loads(process.stdout.readline()) == {"locked": True}

    # When: this session asks for the same lock (waiting at most 10 s).
    started = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '10s'")
        cursor.execute("SELECT pg_advisory_xact_lock(15150)")
    waited = time.monotonic() - started

    # Then: it gets it once the server has ended the idle transaction (0.5 s here).
    assert waited < 5
    out, _ = process.communicate("", timeout=30)
    assert "idle-in-transaction timeout" in json.loads(out)["message"]


def test_given_services_mode_then_connections_carry_the_tcp_user_timeout(db):
    with connection.cursor():
        parameters = connection.connection.info.get_parameters()

    expected = settings.DATABASE_TCP_USER_TIMEOUT.total_seconds() * 1000
    assert parameters["tcp_user_timeout"] == str(round(expected))
