"""Stopping and restarting the real local services, for tests that prove behaviour without them.

Every stop is paired with a restart (the start command the machine uses) and a wait until the
service answers again, so the suite leaves services as it found them.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def redis_start_command(port: int) -> list[str]:
    """The machine's start command for the Redis on ``port`` (the one it stopped: a developer's
    own instance on another port comes back on that port, with a log of its own)."""
    if port == 6379:
        return REDIS_START
    return [
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        str(Path(tempfile.gettempdir()) / f"redis-{port}.log"),
    ]


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def redis_alive(url: str) -> bool:
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def redis_stopped(url: str) -> Iterator[None]:
    """Shut the local Redis down for the block, then start it again and wait for it."""
    parsed = urlparse(url)
    client = redis.Redis(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 6379,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # shutdown closes the connection it arrived on
    _wait(lambda: not redis_alive(url), 10, "Redis did not stop")
    try:
        yield
    finally:
        subprocess.run(redis_start_command(parsed.port or 6379), check=True, capture_output=True)
        _wait(lambda: redis_alive(url), 20, "Redis did not come back")
