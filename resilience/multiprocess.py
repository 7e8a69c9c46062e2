"""The directory prometheus_client's multiprocess mode shares between processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set, every process (daphne, Celery worker and its pool children,
beat, dispatcher, a management command) writes its metric values to memory-mapped files there,
and ``/metrics`` in any web process reads them all. The files must be wiped when a deployment
starts, and never while one of its processes still runs (its counters would vanish, and files it
still has open would be unlinked under it).

Who wipes: not a single launcher. Procfile lines (honcho, foreman) and systemd units start at the
same time, so no one of them can wipe first. Each process instead *joins* the directory before it
creates any metric (``cryptopay/__init__.py`` calls ``join()``, the first thing every entry point
imports): under an exclusive ``flock`` it looks at the markers (``.member-<pid>``) left by the
processes that joined before; if none of them is alive, the directory is left over from an
earlier run and it wipes every ``*.db`` file; then it writes its own marker. A process that
restarts while its siblings run therefore keeps their counters (Prometheus sees no reset), and the
first process of a fresh start finds a clean directory. ``manage.py serve`` and the Procfile
processes need nothing else.

Bookkeeping: a member that is gone (its pid no longer runs, or now belongs to a process started at
another time) has its ``live*`` gauge files removed (``mark_process_dead``) when the next process
joins; a process that exits normally does this for itself (``atexit``), as do Celery's pool
children (``worker_process_shutdown``, see ``resilience.metrics``). Counter files of finished
processes stay: their counts happened.

Scope: processes on one host sharing one directory (pids identify the files). Containers with
their own pid namespaces must not share a directory; give each its own (the default: unset, one
process, no files).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
MARKER_PREFIX = ".member-"
LOCK_NAME = ".lock"

_joined: str | None = None


def directory() -> Path | None:
    """The shared directory, or None when multiprocess mode is off."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None if it does not run.
    Where /proc is missing, "" for any running pid (pid reuse then goes unnoticed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""
    except OSError:
        return None
    # Field 22 (starttime) follows the command name, which may itself contain spaces and ")".
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(marker: Path) -> bool:
    pid = int(marker.name.removeprefix(MARKER_PREFIX))
    started = _start_time(pid)
    if started is None:
        return False
    recorded = marker.read_text().strip()
    return not recorded or not started or recorded == started


def _mark_dead(path: Path, pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))


def join(path: Path | None = None, *, pid: int | None = None) -> bool:
    """Join the shared directory as ``pid`` (default: this process). Returns True when it wiped
    files left by an earlier run. Idempotent per process; a no-op without the directory."""
    global _joined
    path = path or directory()
    if path is None:
        return False
    own = pid is None
    pid = os.getpid() if pid is None else pid
    if own and _joined == f"{path}:{pid}":
        return False
    path.mkdir(parents=True, exist_ok=True)
    wiped = False
    with (path / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            live = 0
            for marker in path.glob(f"{MARKER_PREFIX}*"):
                other = int(marker.name.removeprefix(MARKER_PREFIX))
                if other != pid and _alive(marker):
                    live += 1
                    continue
                _mark_dead(path, other)
                marker.unlink(missing_ok=True)
            if live == 0:
                for stale in path.glob("*.db"):
                    stale.unlink(missing_ok=True)
                    wiped = True
            (path / f"{MARKER_PREFIX}{pid}").write_text(_start_time(pid) or "")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if own:
        _joined = f"{path}:{pid}"
        atexit.register(leave, path, pid)
    return wiped


def leave(path: Path, pid: int) -> None:
    """A member exits: its live gauges go, its counters stay."""
    if os.getpid() != pid:
        return  # a forked child ran the parent's atexit hooks
    with contextlib.suppress(OSError):
        _mark_dead(path, pid)
        (path / f"{MARKER_PREFIX}{pid}").unlink(missing_ok=True)


def child_exited(pid: int) -> None:
    """A pool child (no member of its own) exits: drop its live gauges."""
    path = directory()
    if path is not None:
        with contextlib.suppress(OSError):
            _mark_dead(path, pid)
