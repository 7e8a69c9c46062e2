"""The Django admin for notifications: endpoints are created with their secret shown once (and
refused for private destinations on the form), secrets are rotated, events and deliveries are
read-only with their deliveries and attempt logs, and deliveries can be redelivered."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from notifications import endpoint_secrets, endpoints
from notifications.delivery import signing_secrets
from notifications.dispatcher import dispatch_events
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from testing.receivers import Receiver
from tests.factories import MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"whsec_[A-Za-z0-9_-]{43}")
NOWHERE = "http://127.0.0.1:9/hooks"


@pytest.fixture
def admin_client_(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("operator", "ops@example.com", None)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def url(model: str, view: str, *args) -> str:
    return reverse(f"admin:notifications_{model}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def delivered_event(merchant, endpoint_url: str) -> tuple[WebhookEndpoint, Event]:
    endpoint, _ = endpoints.webhook_endpoint_create(owner=merchant.public_id, url=endpoint_url)
    payment = make_payment(merchant=merchant)
    event = Event.objects.get(subject=payment.public_id)
    dispatch_events(event_ids=[event.pk])
    return endpoint, event


# --- pages render -------------------------------------------------------------------------------


def test_every_changelist_and_change_page_renders(admin_client_, receiver):
    merchant = MerchantFactory.create()
    endpoint, event = delivered_event(merchant, receiver.url)
    delivery = WebhookDelivery.objects.get(event=event)
    shown = {
        "webhookendpoint": (endpoint, endpoint.public_id),
        "event": (event, event.public_id),
        "webhookdelivery": (delivery, event.public_id),
    }

    for model, (obj, text) in shown.items():
        listing = admin_client_.get(url(model, "changelist"))
        change = admin_client_.get(url(model, "change", obj.pk))
        assert listing.status_code == 200, model
        assert text in listing.content.decode()
        assert change.status_code == 200, model
        assert text in change.content.decode()
    # The event shows its deliveries, the delivery its attempt log; no secret anywhere.
    event_page = admin_client_.get(url("event", "change", event.pk)).content.decode()
    assert endpoint.public_id in event_page and "succeeded" in event_page.lower()
    delivery_page = admin_client_.get(url("webhookdelivery", "change", delivery.pk))
    assert "200" in delivery_page.content.decode()
    endpoint_page = admin_client_.get(url("webhookendpoint", "change", endpoint.pk))
    assert endpoint.secret_encrypted not in endpoint_page.content.decode()
    assert not SECRET.search(endpoint_page.content.decode())
    assert admin_client_.get(url("webhookendpoint", "add")).status_code == 200


def test_events_and_deliveries_are_read_only(admin_client_, receiver):
    _, event = delivered_event(MerchantFactory.create(), receiver.url)
    delivery = WebhookDelivery.objects.get(event=event)

    assert admin_client_.get(url("event", "add")).status_code == 403
    assert admin_client_.get(url("webhookdelivery", "add")).status_code == 403
    assert admin_client_.post(url("event", "delete", event.pk)).status_code == 403
    assert admin_client_.post(url("webhookdelivery", "delete", delivery.pk)).status_code == 403
    assert Event.objects.filter(pk=event.pk).exists()


def test_events_are_searched_and_filtered(admin_client_):
    merchant = MerchantFactory.create()
    payments = [make_payment(merchant=merchant) for _ in range(2)]
    events = [Event.objects.get(subject=payment.public_id) for payment in payments]

    def found(**params) -> set[int]:
        response = admin_client_.get(url("event", "changelist"), params)
        assert response.status_code == 200
        return {obj.pk for obj in response.context["cl"].result_list}

    assert found(q=events[0].public_id) == {events[0].pk}
    assert found(q=payments[1].public_id) == {events[1].pk}
    assert found(q=merchant.public_id) == {events[0].pk, events[1].pk}
    assert found(type="payment.created", priority="normal") >= {events[0].pk, events[1].pk}
    assert found(type="payment.expired") & {events[0].pk, events[1].pk} == set()


# --- endpoints ----------------------------------------------------------------------------------


def test_adding_an_endpoint_shows_its_secret_once_and_stores_it_encrypted(admin_client_):
    merchant = MerchantFactory.create()

    response = admin_client_.post(
        url("webhookendpoint", "add"),
        {
            "owner": merchant.public_id,
            "url": NOWHERE,
            "description": "orders",
            "event_types": ["payment.status_changed", "payment.created"],
            "enabled": "on",
        },
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert SECRET.findall(page) and len(SECRET.findall(page)) == 1
    shown = SECRET.search(page)
    assert shown is not None
    secret = shown.group()
    assert "no-store" in response["Cache-Control"]
    endpoint = WebhookEndpoint.objects.get(owner=merchant.public_id)
    assert endpoint.public_id in page
    assert (endpoint.url, endpoint.description, endpoint.enabled) == (NOWHERE, "orders", True)
    assert endpoint.event_types == ["payment.created", "payment.status_changed"]
    assert endpoint_secrets.decrypt(endpoint.secret_encrypted) == secret
    row = WebhookEndpoint.objects.filter(pk=endpoint.pk).values().get()
    assert not [column for column, value in row.items() if secret in str(value)]
    change_page = admin_client_.get(url("webhookendpoint", "change", endpoint.pk))
    assert secret not in change_page.content.decode()


def test_an_endpoint_added_disabled_stays_disabled(admin_client_):
    merchant = MerchantFactory.create()

    admin_client_.post(url("webhookendpoint", "add"), {"owner": merchant.public_id, "url": NOWHERE})

    assert WebhookEndpoint.objects.get(owner=merchant.public_id).enabled is False


@pytest.mark.parametrize("bad_url", ["http://10.0.0.1/hooks", "http://127.0.0.1:9/"])
def test_a_private_destination_is_refused_on_the_form(admin_client_, settings, bad_url):
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False
    merchant = MerchantFactory.create()

    response = admin_client_.post(
        url("webhookendpoint", "add"),
        {"owner": merchant.public_id, "url": bad_url, "enabled": "on"},
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "private or reserved address" in errors["url"][0]
    assert not SECRET.search(response.content.decode())
    assert not WebhookEndpoint.objects.exists()


def test_changing_an_endpoint_checks_the_new_url(admin_client_, settings):
    endpoint, _ = endpoints.webhook_endpoint_create(owner="mer_x", url=NOWHERE)
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False
    form = {"url": "http://10.0.0.1/", "description": "", "enabled": "on"}

    refused = admin_client_.post(url("webhookendpoint", "change", endpoint.pk), form)
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = True
    changed = admin_client_.post(
        url("webhookendpoint", "change", endpoint.pk),
        {**form, "url": NOWHERE + "/v2", "event_types": ["payment.created"]},
    )

    assert refused.status_code == 200 and refused.context["adminform"].form.errors["url"]
    assert changed.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.event_types, endpoint.owner) == (
        NOWHERE + "/v2",
        ["payment.created"],
        "mer_x",
    )


def test_the_rotate_action_shows_the_new_secret_once_and_keeps_the_old_one_valid(admin_client_):
    endpoint, old_secret = endpoints.webhook_endpoint_create(owner="mer_x", url=NOWHERE)

    response = admin_client_.post(
        url("webhookendpoint", "changelist"),
        {"action": "rotate_secret", "_selected_action": [endpoint.pk]},
    )

    assert response.status_code == 200
    shown = SECRET.findall(response.content.decode())
    assert len(shown) == 1 and shown[0] != old_secret
    assert "no-store" in response["Cache-Control"]
    endpoint.refresh_from_db()
    assert signing_secrets(endpoint) == [shown[0], old_secret]


# --- redelivery ---------------------------------------------------------------------------------


def test_the_redeliver_action_attempts_the_selected_deliveries_again(admin_client_, receiver):
    receiver.answer(500)
    _, event = delivered_event(MerchantFactory.create(), receiver.url)
    delivery = WebhookDelivery.objects.get(event=event)
    assert (delivery.status, delivery.attempts) == ("pending", 1)

    response = admin_client_.post(
        url("webhookdelivery", "changelist"),
        {"action": "redeliver", "_selected_action": [delivery.pk]},
    )

    assert response.status_code == 302
    assert messages_of(response) == ["Redelivered 1: 1 succeeded."]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert [a.status_code for a in delivery.log.all()] == [500, 200]
    assert receiver.ids() == [event.public_id, event.public_id]


def test_deliveries_are_filtered_by_status_and_searched_by_event_and_endpoint(
    admin_client_, receiver
):
    merchant = MerchantFactory.create()
    endpoint, delivered = delivered_event(merchant, receiver.url)
    receiver.answer(400)
    failed = Event.objects.get(subject=make_payment(merchant=merchant).public_id)
    dispatch_events(event_ids=[failed.pk])

    def found(**params) -> set[str]:
        response = admin_client_.get(url("webhookdelivery", "changelist"), params)
        assert response.status_code == 200
        return {d.event.public_id for d in response.context["cl"].result_list}

    assert found(status="failed") == {failed.public_id}
    assert found(status="succeeded") == {delivered.public_id}
    assert found(q=failed.public_id) == {failed.public_id}
    assert found(q=endpoint.public_id) == {failed.public_id, delivered.public_id}
