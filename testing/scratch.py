"""What the benches share: a scratch PostgreSQL database and Django set up against it.

Each bench runs in a database of its own (created, migrated, dropped) and under Redis key prefixes
of its own, so it never touches the data of a deployment or a test run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def setup_django(
    database_url: str, redis_url: str, redis_prefix: str, extra: dict[str, str] | None = None
) -> None:
    """Production-like settings (DEBUG off) on the scratch database, migrated."""
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "cryptopay.settings",
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "0",
            "LOG_LEVEL": "WARNING",
            # Every Redis key of this run: cache, breakers, queues, WebSocket registry, channels.
            "CRYPTOPAY_REDIS_PREFIX": redis_prefix,
            # Priced from the static rates, as in the tests: no exchange is asked.
            "CRYPTOPAY_RATE_PROVIDERS": "",
            "CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK": "1",
            **(extra or {}),
        }
    )
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@contextmanager
def scratch_environment(label: str, extra: dict[str, str] | None = None) -> Iterator[None]:
    """Create a scratch database, set Django up on it, and remove the database and this run's
    Redis keys afterwards, whatever happens in between."""
    server_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    name = f"cryptopay_{label}_{os.getpid()}"
    redis_prefix = f"cryptopay-bench-{label}-{os.getpid()}"
    create_database(server_url, name)
    try:
        setup_django(with_database(server_url, name), redis_url, redis_prefix, extra)
        yield
    finally:
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        drop_database(server_url, name)
        import redis

        client = redis.Redis.from_url(redis_url)
        stale = list(client.scan_iter(match=f"{redis_prefix}*", count=1000))
        if stale:
            client.delete(*stale)
