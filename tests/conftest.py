from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKeyScope
from resilience import clock
from resilience.clock import FrozenClock
from resilience.redis_client import redis_holds_release
from testing.exchanges import fake_exchanges  # noqa: F401 - a fixture for every test
from testing.nodes import anvil, anvil_factory, litecoind, litecoind_factory  # noqa: F401
from tests.factories import ApiKeyFactory, MerchantFactory
from tests.security.log_secrets import SecretScanner

ALL_SCOPES = list(ApiKeyScope.values)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _collected_static(django_db_blocker) -> None:
    """Production mode serves hashed static files from a manifest, as a deployment would."""
    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    sources = [
        p
        for app in ("payments", "notifications", "resilience", "cryptopay")
        for p in (ROOT / app / "static").rglob("*")
        if p.is_file()
    ]
    stale = (
        any(p.stat().st_mtime > manifest.stat().st_mtime for p in sources)
        if manifest.exists()
        else True
    )
    if stale:
        with django_db_blocker.unblock():
            call_command("collectstatic", "--noinput", verbosity=0)


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log_line() -> Iterator[None]:
    """Every record of the run, as the application's handlers would write it: none may hold a
    whole API key or webhook secret (tests/security/log_secrets.py)."""
    with SecretScanner() as scanner:
        yield
    assert not scanner.leaks, "secrets in log lines:\n" + "\n".join(scanner.leaks[:20])


@pytest.fixture(scope="session", autouse=True)
def _test_redis_keys_removed():
    """Leave Redis as we found it: drop this run's prefixed keys (queues, breakers, caches)."""
    yield
    if not settings.REDIS_URL:
        return  # embedded mode (tests run on SQLite too): no Redis was used
    import os

    from resilience.redis_client import fast_fail_client

    client = fast_fail_client(settings.REDIS_URL, timeout=2)
    for prefix in {
        f"cryptopay-test-{os.getpid()}",
        settings.CACHES["default"].get("KEY_PREFIX", ""),
    }:
        if prefix:
            for key in client.scan_iter(f"*{prefix}*", count=1000):
                client.delete(key)


@pytest.fixture(autouse=True)
def _redis_holds_released() -> Iterator[None]:
    """No Redis hold (resilience/redis_client.py) outlives the test that caused it: a later
    test's fault proxy may listen on the same port."""
    yield
    redis_holds_release()


@pytest.fixture(autouse=True)
def _dev_chain(settings) -> None:
    # Payments need an address source; the development chain needs no node.
    settings.DEV_CHAIN_ENABLED = True


@pytest.fixture
def frozen_clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    previous = clock.use(frozen)
    yield frozen
    clock.use(previous)


@pytest.fixture
def merchant(db):
    return MerchantFactory()


def api_client_for(merchant, scopes: list[str] | None = None, livemode: bool = True) -> APIClient:
    """A client with a new key of ``merchant`` (a test key when ``livemode`` is False)."""
    _, secret = ApiKeyFactory.create_with_secret(
        merchant=merchant, scopes=scopes or ALL_SCOPES, livemode=livemode
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def api(merchant) -> APIClient:
    """An API client authenticated as ``merchant`` with every scope."""
    return api_client_for(merchant)
