"""Check (and where possible start) the services `make test` needs: PostgreSQL and Redis.

Exits non-zero naming the unreachable service and the command that starts it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time

import psycopg
import redis

PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def postgres_ok(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


def redis_ok(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
        return None
    except redis.RedisError as exc:
        return str(exc)


def try_start(command: str, binary: str) -> None:
    if os.geteuid() != 0 or shutil.which(binary) is None:
        return
    if binary == "pg_ctlcluster" and not glob.glob("/etc/postgresql/*"):
        return
    print(f"starting: {command}", flush=True)
    subprocess.run(command, shell=True, check=False)  # noqa: S602 - fixed command, no input


def wait_for(check, url: str, seconds: float = 15.0) -> str | None:
    deadline = time.monotonic() + seconds
    error = check(url)
    while error and time.monotonic() < deadline:
        time.sleep(0.5)
        error = check(url)
    return error


def main() -> int:
    database_url = os.environ["DATABASE_URL"]
    redis_url = os.environ["REDIS_URL"]
    failures = []
    for name, check, url, start, binary in (
        ("PostgreSQL", postgres_ok, database_url, PG_START, "pg_ctlcluster"),
        ("Redis", redis_ok, redis_url, REDIS_START, "redis-server"),
    ):
        error = check(url)
        if error:
            try_start(start, binary)
            error = wait_for(check, url)
        if error:
            failures.append(f"{name} is unreachable at {url}: {error}\n  start it with: {start}")
        else:
            print(f"{name} OK at {url}")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
