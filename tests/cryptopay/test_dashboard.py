"""The admin resilience dashboard (cryptopay.dashboard_views): staff only, every section shown, isolate
and close reach every process through the breaker's shared state in Redis (proved with other
real processes), and with Redis down the page still answers and says so."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from notifications import endpoints, presence, queues
from notifications.models import Event, WebhookDelivery
from payments.models import ChainCursor
from resilience import clock
from resilience.breaker import SharedStore, breakers
from resilience.models import DependencyState
from resilience.redis_client import fast_fail_client
from testing.faultproxy import FaultProxy
from tests.conftest import api_client_for
from tests.factories import MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = "/admin/resilience/"
ACTION = "/admin/resilience/breaker"
SECTIONS = (
    "redis", "breakers", "dependencies", "operation-chains", "idempotency", "connections",
    "queues", "webhook-backlog", "rate-ages", "watcher-lag",
)  # fmt: skip


class Down(Exception):
    pass


def fail() -> None:
    raise Down


@pytest.fixture
def prefix(settings) -> Iterator[str]:
    """Breakers of this test only: their own shared-state prefix, a fresh registry, and every
    breaker closed (its shared state removed) afterwards."""
    prefix = f"cryptopay-test-dashboard-{uuid.uuid4().hex}:breaker"
    redis_url = settings.REDIS_URL  # a test may point settings elsewhere before teardown
    settings.BREAKER_KEY_PREFIX = prefix
    breakers.forget()
    yield prefix
    breakers.forget(close=True)
    client = fast_fail_client(redis_url, timeout=2)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.fixture
def staff(django_user_model, prefix) -> Client:
    user = django_user_model.objects.create_user("operator", password=None, is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_dependencystate"),
        Permission.objects.get(codename="change_breaker"),
    )  # staff status alone opens nothing (tests/security/test_staff_permissions.py)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def store(prefix: str) -> SharedStore:
    return SharedStore(fast_fail_client(django_settings.REDIS_URL, timeout=2), prefix)


def shared_state(prefix: str, name: str) -> str:
    """The breaker's state as every process reads it from Redis (it must have a record)."""
    shared = store(prefix).read(name)
    assert shared is not None, f"no shared record of {name}"
    return shared.state


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "the dashboard has no CSRF-protected form"
    return match.group(1)


def click(client: Client, name: str, action: str):
    """Press a breaker's button as a browser would: load the page, post its form."""
    page = client.get(DASHBOARD)
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-breaker="{name}"' in html, f"{name} not on the dashboard"
    return client.post(
        ACTION, {"csrfmiddlewaretoken": csrf_token(html), "name": name, "action": action}
    )


def first_group(pattern: str, text: str) -> str:
    """The first group of ``pattern``'s first match in ``text`` (across lines); fails without."""
    match = re.search(pattern, text, re.S)
    assert match, f"{pattern!r} not found"
    return match.group(1)


def section(html: str, section_id: str) -> str:
    return first_group(rf'<section id="{section_id}">(.*?)</section>', html)


def spawn(module: str, *args: str, mode: str | None = None) -> subprocess.Popen:
    """``python -m module [mode] <redis url> args...`` (tests.resilience.breaker_process takes a
    mode first)."""
    head = [mode] if mode else []
    return subprocess.Popen(
        [sys.executable, "-m", module, *head, django_settings.REDIS_URL, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def lines(process: subprocess.Popen, timeout: float = 30) -> list[dict]:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


def call_from_another_process(prefix: str, name: str) -> dict:
    """What one call through breaker ``name`` meets in a fresh OS process."""
    return lines(spawn("tests.cryptopay.dashboard_breaker_process", prefix, name))[0]


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- what it shows ------------------------------------------------------------------------------


def test_given_a_system_in_use_when_staff_opens_the_dashboard_then_every_section_shows_it(
    staff, settings, frozen_clock
):
    # Given: a breaker this process opened, a dependency degraded with a failed recovery, a
    # pending webhook delivery, a payment (its pair in use, its event queued), an open WebSocket
    # connection, and a chain whose watcher is 3 blocks behind.
    tripped = breakers.get("dashboard:tripped")
    for _ in range(5):
        with pytest.raises(Down):
            tripped.call(fail)
    now = clock.now()
    DependencyState.objects.create(
        name="redis:cache", kind="redis", level="degraded", reason="slow answers",
        level_since=now, checked_at=now, probe_ms=12, recovery_attempts=2, recovery_failures=1,
        last_recovery_at=now, last_recovery_outcome="failed", last_recovery_detail="reconnect refused",
    )  # fmt: skip
    merchant = MerchantFactory.create()
    make_payment(merchant=merchant, crypto_currency="BTC", currency="USD")
    endpoint, _ = endpoints.webhook_endpoint_create(
        owner=merchant.public_id, url="http://127.0.0.1:9/hooks"
    )
    event = Event.objects.first()
    assert event is not None  # the payment's creation event
    WebhookDelivery.objects.create(
        endpoint=endpoint, event=event, created_at=now - timedelta(minutes=5)
    )
    connections = presence.connection_registry()
    connections.register(user="merchant-dash", connection="c1", limit=5)
    connections.register(user="merchant-dash", connection="c2", limit=5)
    settings.CHAINS = {
        "ethereum": {"kind": "evm", "currency": "ETH", "chain_id": 31337,
                     "nodes": ["http://127.0.0.1:1"]},
    }  # fmt: skip
    ChainCursor.objects.create(
        chain="ethereum", height=97, tip_height=100, node="http://127.0.0.1:1", polled_at=now
    )

    try:
        response = staff.get(DASHBOARD)
    finally:
        for name in ("c1", "c2"):
            connections.unregister(user="merchant-dash", connection=name)

    # Then
    assert response.status_code == 200
    html = response.content.decode()
    for section_id in SECTIONS:
        section(html, section_id)
    assert "Redis is available" in section(html, "redis")
    row = first_group(r'data-breaker="dashboard:tripped">(.*?)</tr>', html)
    assert "open" in row and "100%" in row and "5 of 5 calls" in row
    assert re.search(r"\d+ s", row), "retry-after missing"
    assert 'value="isolate"' in row and 'value="close"' in row
    dependency = first_group(r'data-dependency="redis:cache">(.*?)</tr>', html)
    assert "degraded" in dependency and "slow answers" in dependency
    assert "failed" in dependency and "reconnect refused" in dependency
    assert "2 (1 failed)" in dependency
    assert "data-chain=" in section(html, "operation-chains")
    assert "Executed" in section(html, "idempotency")
    assert "Keys stored" in section(html, "idempotency")
    assert "merchant-dash" in section(html, "connections")
    assert "2 (1 users)" in section(html, "connections")
    assert 'data-queue="high"' in section(html, "queues")
    backlog = section(html, "webhook-backlog")
    assert "<dd>1</dd>" in backlog and "300 s ago" in backlog
    assert "BTC-USD" in section(html, "rate-ages")
    lag = first_group(r'data-chain-watcher="ethereum">(.*?)</tr>', html)
    assert "<td>3</td>" in lag and "97 / 100" in lag
    # Auto-refresh.
    assert '<meta http-equiv="refresh" content="10">' in html


def idempotency_figure(client: Client, label: str) -> int:
    html = section(client.get(DASHBOARD).content.decode(), "idempotency")
    return int(first_group(rf"<dt>{label}</dt><dd>(\d+)</dd>", html))


def test_given_an_idempotent_request_replayed_when_staff_looks_then_the_figures_count_it(
    staff, merchant
):
    before = {label: idempotency_figure(staff, label) for label in ("Executed", "Replayed")}
    api = api_client_for(merchant)
    key = f"dashboard-{uuid.uuid4().hex}"

    for _ in range(2):
        response = api.post(
            "/api/v1/payments",
            {"amount": "10.00", "crypto_currency": "BTC"},
            format="json",
            HTTP_IDEMPOTENCY_KEY=key,
        )
        assert response.status_code == 201

    assert idempotency_figure(staff, "Executed") == before["Executed"] + 1
    assert idempotency_figure(staff, "Replayed") == before["Replayed"] + 1
    stored = section(staff.get(DASHBOARD).content.decode(), "idempotency")
    assert re.search(r"<dt>Keys stored</dt><dd>[1-9]\d* \(", stored)


def test_given_staff_when_the_admin_index_is_opened_then_it_links_to_the_dashboard(staff):
    response = staff.get(reverse("admin:index"))

    assert response.status_code == 200
    assert f'href="{DASHBOARD}"' in response.content.decode()


# --- who may use it -----------------------------------------------------------------------------


def test_given_an_anonymous_visitor_when_the_dashboard_is_opened_then_it_is_the_admin_login(
    prefix,
):
    breakers.get("dashboard:anon")
    client = Client()

    page = client.get(DASHBOARD)
    post = client.post(ACTION, {"name": "dashboard:anon", "action": "isolate"})

    assert page.status_code == 302
    assert page["Location"].startswith(reverse("admin:login"))
    assert post.status_code == 302
    assert post["Location"].startswith(reverse("admin:login"))
    assert store(prefix).read("dashboard:anon") is None


def test_given_a_logged_in_user_without_staff_status_when_they_try_then_they_are_refused(
    django_user_model, prefix
):
    user = django_user_model.objects.create_user("merchant", password=None, is_staff=False)
    breakers.get("dashboard:nonstaff")
    client = Client()
    client.force_login(user)

    page = client.get(DASHBOARD)
    post = client.post(ACTION, {"name": "dashboard:nonstaff", "action": "isolate"})

    assert page.status_code == 302
    assert page["Location"].startswith(reverse("admin:login"))
    assert post.status_code == 302
    assert store(prefix).read("dashboard:nonstaff") is None
    assert breakers.get("dashboard:nonstaff").state == "closed"


def test_given_staff_when_isolate_is_posted_without_a_csrf_token_then_it_is_refused(staff, prefix):
    breakers.get("dashboard:csrf")

    response = staff.post(ACTION, {"name": "dashboard:csrf", "action": "isolate"})

    assert response.status_code == 403
    assert store(prefix).read("dashboard:csrf") is None
    assert breakers.get("dashboard:csrf").state == "closed"


def test_given_staff_when_an_unknown_breaker_or_action_is_posted_then_nothing_happens(staff):
    breakers.get("dashboard:known")
    token = csrf_token(staff.get(DASHBOARD).content.decode())

    unknown = staff.post(
        ACTION, {"csrfmiddlewaretoken": token, "name": "no-such-breaker", "action": "isolate"}
    )
    bad_action = staff.post(
        ACTION, {"csrfmiddlewaretoken": token, "name": "dashboard:known", "action": "explode"}
    )
    get = staff.get(ACTION)

    assert unknown.status_code == 404
    assert bad_action.status_code == 400
    assert get.status_code == 405
    assert breakers.get("dashboard:known").state == "closed"


# --- isolate and close reach every process ------------------------------------------------------


def test_given_processes_using_a_breaker_when_staff_isolates_it_then_every_process_rejects(
    staff, prefix
):
    # Given: the web process uses breaker "dep"; another OS process is calling through it.
    breakers.get("dep")
    watcher = spawn("tests.resilience.breaker_process", prefix, "20", mode="watch")
    assert watcher.stdout is not None
    assert json.loads(watcher.stdout.readline()) == {"ready": True}
    assert call_from_another_process(prefix, "dep")["result"] == "ok"

    # When: the operator presses Isolate.
    clicked_at = time.time()
    response = click(staff, "dep", "isolate")

    # Then: the running process rejects within a second, a fresh one too, and the page says so.
    assert response.status_code == 302 and response["Location"] == DASHBOARD
    assert messages_of(response) == ["Breaker dep isolated in every process."]
    rejected = lines(watcher)[0]
    assert rejected["rejected_at"] is not None
    assert rejected["rejected_at"] - clicked_at < 1.0
    assert call_from_another_process(prefix, "dep") == {"result": "isolated", "state": "isolated"}
    assert shared_state(prefix, "dep") == "isolated"
    row = first_group(r'data-breaker="dep">(.*?)</tr>', staff.get(DASHBOARD).content.decode())
    assert "isolated" in row and "until closed" in row

    # When: the operator presses Close. Then: every process calls through again.
    response = click(staff, "dep", "close")

    assert response.status_code == 302
    assert messages_of(response) == ["Breaker dep closed in every process."]
    assert shared_state(prefix, "dep") == "closed"  # a record, so lost data is not "closed"
    assert call_from_another_process(prefix, "dep") == {"result": "ok", "state": "closed"}
    assert breakers.get("dep").state == "closed"


def test_given_a_breaker_opened_only_in_another_process_when_staff_looks_then_it_can_be_handled(
    staff, prefix
):
    # Given: another process opened "dep"; this process never used it.
    assert (
        lines(spawn("tests.resilience.breaker_process", prefix, mode="open"))[0]["results"]
        == ["failed"] * 5
    )
    assert "dep" not in {breaker.name for breaker in breakers.all()}

    # Then: the dashboard finds it in the shared state.
    html = staff.get(DASHBOARD).content.decode()
    found = re.search(r'data-breaker="dep">(.*?)</tr>', html, re.S)
    assert found, "the dashboard has no row for the breaker"
    row = found.group(1)
    assert "open" in row and "not used in this process" in row

    # When isolated, then closed from the dashboard: every process follows.
    assert click(staff, "dep", "isolate").status_code == 302
    assert shared_state(prefix, "dep") == "isolated"
    assert call_from_another_process(prefix, "dep")["result"] == "isolated"
    assert "dep" not in {breaker.name for breaker in breakers.all()}

    assert click(staff, "dep", "close").status_code == 302
    assert shared_state(prefix, "dep") == "closed"
    assert call_from_another_process(prefix, "dep")["result"] == "ok"


# --- Redis down ---------------------------------------------------------------------------------


@pytest.fixture
def redis_proxy(settings, prefix, monkeypatch):
    """Every Redis client of this process goes through a FaultProxy (down() stops "Redis")."""
    target = urlparse(django_settings.REDIS_URL)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        url = proxy.url("redis", target.path or "/0")
        settings.REDIS_URL = url
        settings.CACHES = {"default": {**django_settings.CACHES["default"], "LOCATION": url}}
        breakers.forget()
        queues.client.cache_clear()
        monkeypatch.setattr(presence, "_registry", None)
        yield proxy
        proxy.pass_through()
        breakers.forget(close=True)
    queues.client.cache_clear()


def test_given_redis_goes_down_when_staff_opens_the_dashboard_then_it_still_answers(
    staff, redis_proxy
):
    # Given: a breaker in use, the page read once with Redis up (its clients are connected).
    breakers.get("dashboard:down")
    DependencyState.objects.create(
        name="database", kind="database", level="healthy", checked_at=clock.now()
    )
    assert "Redis is available" in staff.get(DASHBOARD).content.decode()

    # When: Redis stops answering.
    redis_proxy.down()
    started = time.monotonic()
    response = staff.get(DASHBOARD)
    elapsed = time.monotonic() - started

    # Then: 200, quickly, with what it can read and saying what it cannot.
    assert response.status_code == 200
    assert elapsed < 5
    html = response.content.decode()
    for section_id in SECTIONS:
        section(html, section_id)
    assert "Redis is unavailable" in section(html, "redis")
    assert "Shared breaker states unavailable" in section(html, "breakers")
    assert 'data-breaker="dashboard:down"' in section(html, "breakers")
    assert "Queue depths unavailable" in section(html, "queues")
    assert "Fleet-wide connection figures unavailable" in section(html, "connections")
    assert 'data-dependency="database"' in section(html, "dependencies")
    assert "Pending deliveries" in section(html, "webhook-backlog")

    # And isolating still holds this process's breaker open, saying it reached no other.
    response = staff.post(
        ACTION,
        {"csrfmiddlewaretoken": csrf_token(html), "name": "dashboard:down", "action": "isolate"},
    )
    assert response.status_code == 302
    assert messages_of(response) == [
        "Breaker dashboard:down isolated in this process only: its shared state is unavailable."
    ]
    assert breakers.get("dashboard:down").state == "isolated"
