"""The served process's startup heap is out of the garbage collector's walk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testing.servers import server_environment

ROOT = Path(__file__).resolve().parents[2]

# Loads the web entry point as a server worker does, then reports what a full collection walks.
PROBE = """
import gc, json, time
import cryptopay.asgi
gc.collect()
started = time.perf_counter()
gc.collect()
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "walked": len(gc.get_objects()),
    "seconds": time.perf_counter() - started,
}))
"""


def test_given_a_web_worker_set_up_when_a_full_collection_runs_then_it_walks_none_of_the_startup_heap():
    # Given: the ASGI entry point imported in a fresh process, as uvicorn's worker imports it.
    answer = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=server_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    # When: a full collection runs, then: it walks a small fraction of the objects alive (the
    # modules, views and settings are frozen), so a request it interrupts barely waits.
    figures = json.loads(answer.stdout.strip().splitlines()[-1])
    assert figures["frozen"] > 100_000, figures
    assert figures["walked"] * 10 < figures["frozen"], figures
