"""Web workers and their database pools: one worker per core by default, and workers x pool
within PostgreSQL's max_connections minus the reserve for the other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryptopay.settings import database_pool_max

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json
import django
django.setup()
from django.conf import settings
print(json.dumps({
    "workers": settings.SERVER_WORKERS,
    "pool_max": settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"],
}))
"""


def probe(**given: str) -> dict[str, int]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("WEB_CONCURRENCY", "CRYPTOPAY_WEB_WORKERS", "CRYPTOPAY_DB_POOL_MAX")
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

    assert found == {"workers": 5, "pool_max": 16}  # 170 // 5 = 34, capped
    assert probe(WEB_CONCURRENCY="20")["pool_max"] == 3  # (100 - 30) // 20


def test_an_explicit_pool_size_wins():
    assert probe(WEB_CONCURRENCY="4", CRYPTOPAY_DB_POOL_MAX="3")["pool_max"] == 3
