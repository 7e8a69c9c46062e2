"""A breaker in its own OS process, driven by tests/resilience/test_breaker_processes.py.

    python -m tests.resilience.breaker_process <mode> <redis url> <prefix> [args]

Prints one JSON line with what it saw, except in mode ``steps``: there it reads one JSON command
per line from stdin and answers each with one JSON line, on a clock the test sets, so a test
interleaves two processes step by step. Commands: ``{"at": t, "call": "ok" | "fail"}``,
``{"at": t, "do": "state" | "isolate" | "close"}``. With ``BREAKER_PROCESS_DJANGO=1`` in the
environment the breaker keeps isolates in the database (settings from the environment).
"""

from __future__ import annotations

import json
import os
import sys
import time

from resilience.breaker import BreakerOptions, BrokenCircuitError, CircuitBreaker, SharedStore
from resilience.redis_client import fast_fail_client

OPTIONS = BreakerOptions(minimum_throughput=5, break_duration=2.0, sampling_duration=30)


class Down(Exception):
    pass


def fail() -> None:
    raise Down


def call(breaker: CircuitBreaker, fn) -> str:
    try:
        breaker.call(fn)
        return "ok"
    except Down:
        return "failed"
    except BrokenCircuitError:
        return "rejected"


class SetClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steps(url: str, prefix: str) -> None:
    ledger = None
    if os.environ.get("BREAKER_PROCESS_DJANGO") == "1":
        import django

        django.setup()
        from resilience.isolation import DatabaseIsolationLedger

        ledger = DatabaseIsolationLedger()
    clock = SetClock()
    store = SharedStore(fast_fail_client(url), prefix)
    with_ledger = {"ledger": ledger} if ledger is not None else {}
    breaker = CircuitBreaker("dep", OPTIONS, store=store, clock=clock, **with_ledger)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        clock.now = float(command["at"])
        answer: dict = {}
        if "call" in command:
            answer["result"] = call(breaker, fail if command["call"] == "fail" else lambda: None)
        elif command["do"] == "isolate":
            breaker.isolate()
        elif command["do"] == "close":
            breaker.close()
        answer["state"] = breaker.state.value
        print(json.dumps(answer), flush=True)


def main() -> None:
    mode, url, prefix = sys.argv[1:4]
    if mode == "steps":
        steps(url, prefix)
        return
    breaker = CircuitBreaker("dep", OPTIONS, store=SharedStore(fast_fail_client(url), prefix))
    if mode == "open":
        results = [call(breaker, fail) for _ in range(5)]
        print(json.dumps({"results": results, "opened_at": time.time()}), flush=True)
    elif mode == "watch":
        # Calls a healthy dependency until the shared breaker rejects it; reports when.
        deadline = time.time() + float(sys.argv[4])
        print(json.dumps({"ready": True}), flush=True)
        while time.time() < deadline:
            if call(breaker, lambda: None) == "rejected":
                print(json.dumps({"rejected_at": time.time()}), flush=True)
                return
            time.sleep(0.01)  # a caller's pace, not a wait for a condition
        print(json.dumps({"rejected_at": None}), flush=True)
    elif mode == "probe":
        # Waits until the given wall-clock start, then makes one call whose probe takes a while.
        start = float(sys.argv[4])
        breaker.state  # noqa: B018 - load the shared (open) state before the race
        while time.time() < start:
            time.sleep(0.005)
        result = call(breaker, lambda: time.sleep(1.0))
        print(json.dumps({"result": result, "state": breaker.state.value}), flush=True)
    elif mode == "local":
        # With Redis unreachable: healthy calls pass, failures open the circuit locally.
        first = call(breaker, lambda: None)
        failures = [call(breaker, fail) for _ in range(5)]
        after = call(breaker, lambda: None)
        print(
            json.dumps(
                {
                    "first": first,
                    "failures": failures,
                    "after": after,
                    "shared": breaker.snapshot()["shared"],
                }
            ),
            flush=True,
        )
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
