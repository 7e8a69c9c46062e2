"""The shared breaker across real OS processes, with real Redis (and without it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from testing.service_control import redis_stopped

ROOT = Path(__file__).resolve().parents[2]


def spawn(mode: str, prefix: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.resilience.breaker_process",
            mode,
            settings.REDIS_URL,
            prefix,
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def lines(process: subprocess.Popen, timeout: float = 30) -> list[dict]:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def prefix() -> str:
    return f"test-breaker-{uuid.uuid4().hex}"


def test_a_breaker_opened_in_one_process_rejects_in_another_within_one_second(prefix):
    watcher = spawn("watch", prefix, "20")
    assert json.loads(watcher.stdout.readline()) == {"ready": True}

    opened = lines(spawn("open", prefix))[0]
    rejected = lines(watcher)[0]

    assert opened["results"] == ["failed"] * 5
    assert rejected["rejected_at"] is not None
    assert rejected["rejected_at"] - opened["opened_at"] < 1.0


def test_after_the_break_only_one_process_probes(prefix):
    lines(spawn("open", prefix))
    start = str(time.time() + 2.5)  # the break is 2 s

    racers = [spawn("probe", prefix, start) for _ in range(2)]
    results = sorted(lines(racer)[0]["result"] for racer in racers)

    assert results == ["ok", "rejected"]


def test_with_redis_stopped_each_process_keeps_working_on_local_state(prefix):
    with redis_stopped(settings.REDIS_URL):
        outcomes = [lines(spawn("local", prefix)) for _ in range(2)]

    for (outcome,) in outcomes:
        # 1 success + 4 failures reach the minimum throughput of 5 at a ratio of 0.8: open.
        assert outcome == {
            "first": "ok",
            "failures": ["failed"] * 4 + ["rejected"],
            "after": "rejected",
            "shared": False,
        }
