"""The shared breaker across OS processes, step by step.

Each process (tests/resilience/breaker_process.py, mode ``steps``) runs one breaker on real Redis
with a clock the test sets on every command, and answers each command before the test sends the
next: the interleaving is the test's, not the scheduler's. Breaks are 2 s of that clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from resilience.breaker import CircuitState, SharedStore
from resilience.models import BreakerIsolation
from resilience.redis_client import fast_fail_client
from testing.servers import served_database_url
from testing.service_control import redis_stopped

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_000_000.0  # the processes' clock; a break opened at T0 ends at T0 + 2


class Process:
    """One breaker process, driven one command at a time."""

    def __init__(self, prefix: str, *, django: bool = False) -> None:
        env = None
        if django:
            env = {
                **__import__("os").environ,
                "BREAKER_PROCESS_DJANGO": "1",
                "DJANGO_SETTINGS_MODULE": "cryptopay.settings",
                "DATABASE_URL": served_database_url(),
            }
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.resilience.breaker_process",
                "steps",
                settings.REDIS_URL,
                prefix,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        assert line, "the breaker process exited"
        return json.loads(line)

    def _send(self, command: dict) -> dict:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        return self._read()

    def call(self, at: float, outcome: str = "ok") -> dict:
        return self._send({"at": at, "call": outcome})

    def do(self, at: float, action: str) -> dict:
        return self._send({"at": at, "do": action})

    def open_circuit(self, at: float) -> None:
        results = [self.call(at, "fail")["result"] for _ in range(5)]
        assert results == ["failed"] * 5

    def stop(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"cryptopay-test-fleet-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.fixture
def processes(prefix) -> Iterator[callable]:
    started: list[Process] = []

    def start(*, django: bool = False) -> Process:
        started.append(Process(prefix, django=django))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def shared_state(prefix: str):
    return SharedStore(fast_fail_client(settings.REDIS_URL, timeout=2), prefix).read("dep")


# --- item 1: one half-open probe, fleet-wide -----------------------------------------------------


def test_given_a_probe_closed_the_circuit_when_a_process_that_had_not_synced_fails_then_the_circuit_stays_closed(
    processes, prefix
):
    # Given: A opened the circuit; B saw it open just before the break ended (its last sync).
    a, b = processes(), processes()
    a.open_circuit(T0)
    assert b.call(T0 + 1.9) == {"result": "rejected", "state": "open"}

    # When: A's probe succeeds, then B (within its sync interval, so without a sync of its own)
    # makes a call that fails.
    assert a.call(T0 + 2.0) == {"result": "ok", "state": "closed"}
    second = b.call(T0 + 2.1, "fail")

    # Then: B's call was an ordinary call of a closed circuit, not a second probe of the break
    # A's probe already ended: nothing reopens, for B, for A, or in Redis.
    assert second == {"result": "failed", "state": "closed"}
    assert a.call(T0 + 2.5) == {"result": "ok", "state": "closed"}
    assert shared_state(prefix).state is CircuitState.CLOSED


def test_given_a_probe_permit_still_leased_when_the_circuit_reopens_then_the_next_break_gets_its_own_probe(
    processes,
):
    # Given: A probed and closed one break (its permit is left to expire: a 30 s lease).
    a, b = processes(), processes()
    a.open_circuit(T0)
    assert a.call(T0 + 2.0) == {"result": "ok", "state": "closed"}

    # When: the circuit opens again and that break ends.
    a.open_circuit(T0 + 3.0)
    assert b.call(T0 + 3.5)["result"] == "rejected"

    # Then: exactly one process probes the new break.
    assert b.call(T0 + 5.0) == {"result": "ok", "state": "closed"}
    assert a.call(T0 + 5.1) == {"result": "ok", "state": "closed"}


def test_given_a_process_holding_the_probe_when_another_asks_then_it_is_rejected_half_open(
    processes,
):
    # Given: B took the probe permit of the break A opened (its probe failed: reopened).
    a, b = processes(), processes()
    a.open_circuit(T0)
    assert b.call(T0 + 2.0, "fail") == {"result": "failed", "state": "open"}

    # Then: A adopts B's new break instead of probing the old one.
    assert a.call(T0 + 2.1) == {"result": "rejected", "state": "open"}
    assert a.call(T0 + 4.1) == {"result": "ok", "state": "closed"}


# --- item 2: Redis data loss does not close breakers ---------------------------------------------


def test_given_an_open_circuit_when_redis_restarts_empty_then_every_process_stays_open_until_its_break_ends(
    processes, prefix
):
    # Given: A opened the circuit, B follows it.
    a, b = processes(), processes()
    a.open_circuit(T0)
    assert b.call(T0 + 0.5)["result"] == "rejected"

    # When: Redis restarts without its data.
    with redis_stopped(settings.REDIS_URL):
        pass
    assert shared_state(prefix) is None

    # Then: neither process calls the failing dependency before the break ends, and the shared
    # state is put back for the others (a fresh process is rejected too).
    assert b.call(T0 + 1.0) == {"result": "rejected", "state": "open"}
    assert a.call(T0 + 1.5) == {"result": "rejected", "state": "open"}
    assert shared_state(prefix).state is CircuitState.OPEN
    assert processes().call(T0 + 1.6)["result"] == "rejected"
    # After the break, one probe closes it everywhere.
    assert b.call(T0 + 2.0) == {"result": "ok", "state": "closed"}
    assert a.call(T0 + 2.5) == {"result": "ok", "state": "closed"}


@pytest.mark.django_db(transaction=True)
def test_given_an_operator_isolate_when_redis_loses_it_then_a_new_process_still_rejects_and_close_ends_it(
    processes, prefix
):
    # Given: the operator isolated the breaker from A; B follows it.
    a, b = processes(django=True), processes(django=True)
    assert a.do(T0, "isolate")["state"] == "isolated"
    assert b.call(T0 + 0.5) == {"result": "rejected", "state": "isolated"}
    assert BreakerIsolation.objects.filter(name="dep").exists()

    # When: Redis restarts without its data, and a process starts that never saw the isolate.
    with redis_stopped(settings.REDIS_URL):
        pass
    c = processes(django=True)

    # Then: the new process reads the isolate from PostgreSQL, rejects, and puts it back in Redis.
    assert c.call(T0 + 1.0) == {"result": "rejected", "state": "isolated"}
    assert shared_state(prefix).state is CircuitState.ISOLATED
    assert b.call(T0 + 3600) == {"result": "rejected", "state": "isolated"}

    # When the operator closes it (from any process): every process calls through again.
    assert c.do(T0 + 3601, "close")["state"] == "closed"
    assert not BreakerIsolation.objects.filter(name="dep").exists()
    assert a.call(T0 + 3602) == {"result": "ok", "state": "closed"}
    assert b.call(T0 + 3602) == {"result": "ok", "state": "closed"}
