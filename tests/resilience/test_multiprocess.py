"""The shared metrics directory: the first process of a fresh start wipes what an earlier run
left, a process joining running siblings keeps their files, and a process that ends takes its
live gauges with it but leaves its counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from resilience import multiprocess
from tests.cryptopay.test_settings import REPO

# A member process: joins, counts one, holds a live gauge, says so, then waits to be ended.
MEMBER = """
import signal, sys
from resilience import multiprocess
multiprocess.join()
from prometheus_client import Counter, Gauge
Counter("probe_events", "events").inc()
Gauge("probe_held", "held", multiprocess_mode="livesum").inc()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
signal.pause()  # until the test ends it (SIGTERM)
"""


def start_member(directory: Path) -> subprocess.Popen:
    env = {**os.environ, multiprocess.ENV: str(directory)}
    process = subprocess.Popen(
        [sys.executable, "-c", MEMBER], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None  # stdout=PIPE
    assert process.stdout.readline().strip() == "ready"
    return process


def files(directory: Path, pid: int) -> set[str]:
    return {path.name for path in directory.glob(f"*_{pid}.db")}


def end(process: subprocess.Popen, how: int) -> None:
    process.send_signal(how)
    process.wait(timeout=30)


def test_given_a_running_member_when_another_process_joins_then_its_files_are_kept(tmp_path):
    first = start_member(tmp_path)
    try:
        second = start_member(tmp_path)
        try:
            assert files(tmp_path, first.pid) == {
                f"counter_{first.pid}.db",
                f"gauge_livesum_{first.pid}.db",
            }
            assert files(tmp_path, second.pid)
        finally:
            end(second, signal.SIGKILL)
    finally:
        end(first, signal.SIGKILL)


def test_given_only_dead_members_when_a_process_joins_then_the_earlier_run_is_wiped(tmp_path):
    crashed = start_member(tmp_path)
    end(crashed, signal.SIGKILL)  # no chance to clean up: its marker and files stay
    assert files(tmp_path, crashed.pid)
    assert (tmp_path / f"{multiprocess.MARKER_PREFIX}{crashed.pid}").exists()

    wiped = multiprocess.join(tmp_path, pid=os.getpid())

    assert wiped
    assert not list(tmp_path.glob("*.db"))
    assert not (tmp_path / f"{multiprocess.MARKER_PREFIX}{crashed.pid}").exists()
    assert (tmp_path / f"{multiprocess.MARKER_PREFIX}{os.getpid()}").exists()


def test_given_a_member_that_ends_normally_then_its_live_gauge_goes_and_its_count_stays(tmp_path):
    sibling = start_member(tmp_path)
    try:
        leaving = start_member(tmp_path)
        end(leaving, signal.SIGTERM)

        assert files(tmp_path, leaving.pid) == {f"counter_{leaving.pid}.db"}
        assert not (tmp_path / f"{multiprocess.MARKER_PREFIX}{leaving.pid}").exists()
    finally:
        end(sibling, signal.SIGKILL)


def test_given_a_crashed_member_among_live_ones_when_a_process_joins_then_only_its_live_gauge_goes(
    tmp_path,
):
    sibling = start_member(tmp_path)
    try:
        crashed = start_member(tmp_path)
        end(crashed, signal.SIGKILL)

        joiner = start_member(tmp_path)
        end(joiner, signal.SIGKILL)

        assert files(tmp_path, crashed.pid) == {f"counter_{crashed.pid}.db"}
        assert files(tmp_path, sibling.pid) == {
            f"counter_{sibling.pid}.db",
            f"gauge_livesum_{sibling.pid}.db",
        }
    finally:
        end(sibling, signal.SIGKILL)


def test_given_a_recorded_start_time_that_differs_then_a_reused_pid_counts_as_dead(tmp_path):
    # Our own pid, recorded with another start time: the process that wrote it is gone.
    marker = tmp_path / f"{multiprocess.MARKER_PREFIX}{os.getpid()}"
    marker.write_text("1")
    (tmp_path / "counter_1.db").write_bytes(b"")

    assert multiprocess.join(tmp_path, pid=os.getppid())
    assert not (tmp_path / "counter_1.db").exists()
