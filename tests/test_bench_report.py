"""`make bench`, short version, inside `make test`: bench/report.py --quick runs every bench at smoke
size, and each must exit cleanly and print figures that the report can set against a baseline.

A bench that breaks, or stops printing its RESULT line, fails here rather than on the day someone
runs the full `make bench`. The figures themselves are not judged: smoke sizes on a shared CI
machine say nothing about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHES = {
    "payment_create",
    "breaker_overhead",
    "idempotency_overhead",
    "live_create",
    "chain_watch",
    "utxo_mempool",
    "notifications",
    "api_throughput",
    "api_capacity",
    "body_flood",
    "redis_hang",
}
OPTIONAL = {"ws_fanout"}  # included when the checkout has it
TIMEOUT_SECONDS = 240
# Variables of the test run that would leak into the benches' own Django setups.
LEAKY_PREFIXES = ("CRYPTOPAY_", "DJANGO_", "PROMETHEUS_", "DEBUG", "SECRET_KEY")


def test_quick_report_has_figures_from_every_bench(tmp_path: Path) -> None:
    assert shutil.which("wrk"), (
        "make test installs Debian wrk (make wrk: scripts/install_debian_tool.sh)"
    )
    expected = BENCHES | {name for name in OPTIONAL if (REPO / "bench" / f"{name}.py").exists()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES)}
    output, figures = tmp_path / "RESULTS.md", tmp_path / "results.json"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.report",
            "--quick",
            # Smoke figures are not judged, so the benches may share the CPU: about 1 minute
            # instead of 2.
            "--jobs",
            "3",
            "--output",
            str(output),
            "--json",
            str(figures),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(figures.read_text())
    runs = {bench["name"]: bench for bench in report["benches"]}
    assert set(runs) == expected
    for name, run in runs.items():
        assert run["returncode"] == 0 and not run["problems"], (name, run["problems"])
        assert run["figures"], name
        assert all(f["value"] is not None for f in run["figures"]), name
        baselines = [f for f in run["figures"] if not f["baseline"]]
        compared = [r for r in run["ratios"] if r["baseline"]]
        assert baselines and compared, f"{name}: no figure against a baseline"
        assert all(r["ratio"] is not None for r in compared), name
    markdown = output.read_text()
    assert "## Machine" in markdown and "PostgreSQL" in markdown and "Redis" in markdown
    for name in expected:
        assert f"## {name}" in markdown
