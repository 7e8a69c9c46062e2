"""The health endpoints against the real PostgreSQL and Redis (one test stops Redis briefly)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client

from resilience import degradation
from resilience.degradation import Dependency, Probe, dependencies_monitor, registry
from resilience.models import DependencyState
from testing.service_control import redis_stopped
from tests.factories import make_payment

JSON = {"HTTP_ACCEPT": "application/json"}


@pytest.fixture
def client(settings) -> Client:
    """Monitoring with the health token: every endpoint with its details (tests/security/
    test_health_disclosure.py covers what everyone else sees)."""
    settings.HEALTH_TOKEN = "health-token-of-the-tests"
    return Client(headers={"Authorization": f"Bearer {settings.HEALTH_TOKEN}"})


@pytest.fixture(autouse=True)
def _clean_states():
    degradation._local_states.clear()
    yield
    degradation._local_states.clear()


def test_given_a_running_process_when_live_is_asked_then_200_without_touching_dependencies(client):
    # No database fixture: any query would raise.
    response = client.get("/health/live", **JSON)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert list(body["checks"]) == ["process"]
    assert body["checks"]["process"]["diagnostics"]["pid"] > 0


@pytest.mark.django_db
def test_given_database_and_redis_up_when_ready_is_asked_then_200_with_timings(client):
    response = client.get("/health/ready?format=json")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert set(body["checks"]) == {"database", "migrations", "redis:cache"}
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["time_ms"], float)
    assert body["checks"]["database"]["diagnostics"]["vendor"] == "postgresql"
    assert body["checks"]["database"]["diagnostics"]["max_connections"] > 0
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_given_a_browser_when_health_is_asked_then_the_html_page_renders(client):
    response = client.get("/health", HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert b"DependencyCheck(name=&#x27;database&#x27;)" in response.content


@pytest.fixture
def external_test_dependency():
    probe = {"value": Probe.degraded("slow answers", p95_ms=900)}
    registry.register(
        "tests.external",
        lambda: [
            Dependency(
                name="test:external",
                kind="test",
                probe=lambda: probe["value"],
                tags=frozenset({"external"}),
            )
        ],
    )
    yield probe
    registry.unregister("tests.external")


@pytest.mark.django_db
def test_given_a_degraded_external_dependency_when_external_is_asked_then_200_degraded(
    client, external_test_dependency
):
    response = client.get("/health/external", **JSON)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["test:external"] == {
        "status": "degraded",
        "time_ms": body["checks"]["test:external"]["time_ms"],
        "message": "slow answers",
        "diagnostics": {"p95_ms": 900},
    }
    assert body["checks"]["webhooks:backlog"]["status"] == "ok"


@pytest.mark.django_db
def test_given_an_unavailable_external_dependency_when_health_is_asked_then_503_naming_it(
    client, external_test_dependency
):
    external_test_dependency["value"] = Probe.unavailable("connection refused")
    dependencies_monitor()

    response = client.get("/health", **JSON)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    check = body["checks"]["test:external"]
    assert (check["status"], check["message"], check["level"]) == (
        "unavailable",
        "connection refused",
        "critical",
    )
    assert body["checks"]["database"]["status"] == "ok"


@pytest.mark.django_db
def test_given_embedded_mode_without_redis_when_ready_is_asked_then_redis_is_not_configured(
    client, settings
):
    settings.REDIS_URL = ""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.CELERY_BROKER_URL = "memory://"

    response = client.get("/health/ready", **JSON)
    levels = dependencies_monitor()

    assert response.status_code == 200
    assert response.json()["checks"]["redis:cache"]["status"] == "not_configured"
    assert "redis:cache" not in levels and "celery:broker" not in levels
    assert levels["database"] == "healthy"


@pytest.mark.django_db(transaction=True)
def test_given_redis_stopped_when_ready_is_asked_then_503_and_payments_still_read_then_200_after_restart(
    client, api, merchant
):
    payment = make_payment(merchant=merchant)
    with redis_stopped(settings.REDIS_URL):
        ready = client.get("/health/ready", **JSON)
        read = api.get(f"/api/v1/payments/{payment.public_id}")
        levels = dependencies_monitor()

        assert ready.status_code == 503
        assert ready.json()["checks"]["redis:cache"]["status"] == "unavailable"
        assert ready.json()["checks"]["database"]["status"] == "ok"
        assert read.status_code == 200 and read.json()["id"] == payment.public_id
        assert levels["redis:cache"] == levels["redis:queues"] == "critical"

    levels = dependencies_monitor()  # one monitoring cycle after Redis is back
    ready = client.get("/health/ready", **JSON)

    assert levels["redis:cache"] == "healthy"
    assert DependencyState.objects.get(name="redis:cache").level == "healthy"
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis:cache"]["level"] == "healthy"
