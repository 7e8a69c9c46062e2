"""The chaos scenario's short version (``python -m chaos --quick``) as part of the suite, so CI
keeps its promises honest: it exits non-zero when a goal is missed (see chaos/scenario.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_chaos_scenario_meets_every_goal(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        # The scenario makes its own database and prefixes; the test run's must not leak in.
        if not key.startswith("CRYPTOPAY_") and key != "DJANGO_SETTINGS_MODULE"
    }
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--quick", "--run-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    results = (tmp_path / "results.txt").read_text() if (tmp_path / "results.txt").exists() else ""
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "duplicate payments                         0 " in results
    assert "not settled in the gateway              0 " in results
