"""Staff status opens the admin, nothing more: the resilience dashboard needs
``resilience.view_dependencystate``, isolating or closing a breaker ``resilience.change_breaker``,
a merchant's live stream ``notifications.view_event``, and the admin actions that change
something (mark payments, revoke keys, rotate secrets, redeliver) the model's change permission.
A staff user holding none is refused each of them."""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from accounts.models import ApiKey
from notifications.models import WebhookDelivery
from notifications.streams import CLOSE_FORBIDDEN
from resilience.breaker import breakers
from tests.factories import ApiKeyFactory
from tests.payments.test_consumers import closed_with, open_socket, run
from tests.security.test_cross_merchant import Owner

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/resilience/"
ACTION = "/admin/resilience/breaker"


@pytest.fixture
def breaker(settings):
    """A breaker of this test's own (its own shared-state prefix), closed again afterwards."""
    settings.BREAKER_KEY_PREFIX = f"cryptopay-test-perm-{uuid.uuid4().hex}:breaker"
    breakers.forget()
    yield breakers.get("perm:test")
    breakers.forget(close=True)


def staff_with(django_user_model, *codenames: str) -> Client:
    user = django_user_model.objects.create_user(
        f"staff-{uuid.uuid4().hex[:8]}", password=None, is_staff=True
    )
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf(client: Client) -> str:
    """The token a browser would hold after opening any admin page."""
    client.get(reverse("admin:index"))
    return client.cookies["csrftoken"].value


def test_given_staff_without_permissions_when_opening_the_dashboard_then_it_is_403(
    django_user_model, breaker
):
    client = staff_with(django_user_model)

    page = client.get(DASHBOARD)
    index = client.get(reverse("admin:index"))

    assert page.status_code == 403
    assert index.status_code == 200
    assert DASHBOARD not in index.content.decode()  # no link to a page it cannot open


@pytest.mark.parametrize("permissions", [(), ("view_dependencystate",)], ids=["none", "view"])
def test_given_staff_without_change_breaker_when_posting_isolate_then_it_is_403_and_closed(
    django_user_model, breaker, permissions
):
    client = staff_with(django_user_model, *permissions)

    response = client.post(
        ACTION, {"csrfmiddlewaretoken": csrf(client), "name": breaker.name, "action": "isolate"}
    )

    assert response.status_code == 403
    assert breaker.state == "closed"


def test_given_staff_with_view_only_when_opening_the_dashboard_then_no_breaker_buttons(
    django_user_model, breaker
):
    client = staff_with(django_user_model, "view_dependencystate")

    page = client.get(DASHBOARD).content.decode()

    assert f'data-breaker="{breaker.name}"' in page
    assert 'value="isolate"' not in page


def test_given_staff_with_change_breaker_when_posting_isolate_then_it_is_isolated(
    django_user_model, breaker
):
    client = staff_with(django_user_model, "view_dependencystate", "change_breaker")
    page = client.get(DASHBOARD).content.decode()
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found is not None, "the dashboard renders a CSRF token for its breaker form"
    token = found.group(1)

    response = client.post(
        ACTION, {"csrfmiddlewaretoken": token, "name": breaker.name, "action": "isolate"}
    )

    assert response.status_code == 302
    assert breaker.state == "isolated"


def staff_session_cookie(django_user_model, *codenames: str) -> bytes:
    client = staff_with(django_user_model, *codenames)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.mark.django_db(transaction=True)
def test_given_staff_without_view_event_when_opening_a_merchant_stream_then_it_is_forbidden(
    django_user_model,
):
    owner = Owner.create()
    cookie = staff_session_cookie(django_user_model)

    async def scenario():
        socket = await open_socket(
            f"/ws/merchant/?merchant={owner.payment.merchant.public_id}", [(b"cookie", cookie)]
        )
        code, reason = await closed_with(socket)
        assert code == CLOSE_FORBIDDEN
        assert "notifications.view_event" in reason

    run(scenario())


@pytest.mark.django_db(transaction=True)
def test_given_staff_with_view_event_when_opening_a_merchant_stream_then_it_is_subscribed(
    django_user_model,
):
    owner = Owner.create()
    cookie = staff_session_cookie(django_user_model, "view_event")

    async def scenario():
        socket = await open_socket(
            f"/ws/merchant/?merchant={owner.payment.merchant.public_id}", [(b"cookie", cookie)]
        )
        subscribed = await socket.receive_json_from(timeout=5)
        assert subscribed["type"] == "subscribed"
        await socket.disconnect()

    run(scenario())


def post_action(client: Client, model: str, action: str, pk: int):
    return client.post(
        reverse(f"admin:{model}_changelist"),
        {"csrfmiddlewaretoken": csrf(client), "action": action, "_selected_action": [pk]},
    )


@pytest.mark.parametrize(
    ("model", "action", "view_permission"),
    [
        ("payments_payment", "mark_settled", "view_payment"),
        ("accounts_apikey", "revoke", "view_apikey"),
        ("notifications_webhookendpoint", "rotate_secret", "view_webhookendpoint"),
        ("notifications_webhookdelivery", "redeliver", "view_webhookdelivery"),
    ],
)
def test_given_staff_with_view_only_when_posting_an_admin_action_then_nothing_changes(
    django_user_model, model, action, view_permission
):
    owner = Owner.create()
    api_key, _ = ApiKeyFactory.create_with_secret(merchant=owner.payment.merchant)
    target = {
        "payments_payment": owner.payment,
        "accounts_apikey": api_key,
        "notifications_webhookendpoint": owner.endpoint,
        "notifications_webhookdelivery": WebhookDelivery.objects.get(endpoint=owner.endpoint),
    }[model]
    before = owner.snapshot()
    client = staff_with(django_user_model, view_permission)

    listing = client.get(reverse(f"admin:{model}_changelist"))
    response = post_action(client, model, action, target.pk)

    assert listing.status_code == 200
    assert f'value="{action}"' not in listing.content.decode()
    assert response.status_code in (200, 302)
    assert owner.snapshot() == before  # payment, endpoint (its secret), deliveries unchanged
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is None
