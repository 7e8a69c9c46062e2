"""SSRF: webhook endpoints may not point at private, loopback, link-local or reserved addresses,
neither when created or changed over the API nor when a delivery is sent (DNS may have changed).
The suite allows private destinations (its receivers listen on 127.0.0.1); these tests don't."""

from __future__ import annotations

import pytest

from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from notifications.services import deliveries_create, webhook_deliver, webhook_endpoint_create
from tests.factories import make_payment
from tests.notifications.receivers import Receiver

pytestmark = pytest.mark.django_db

PRIVATE = [
    "http://127.0.0.1/hooks",
    "http://localhost:8080/hooks",
    "http://[::1]/hooks",
    "http://10.1.2.3/hooks",
    "http://172.16.0.1/hooks",
    "http://192.168.1.1/hooks",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata service
    "http://100.64.0.1/hooks",  # carrier-grade NAT
    "http://0.0.0.0/hooks",
    "http://[::ffff:127.0.0.1]/hooks",  # IPv4-mapped loopback
    "http://[fd00::1]/hooks",
    "https://224.0.0.1/hooks",  # multicast
]


@pytest.fixture(autouse=True)
def _private_destinations_refused(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False


@pytest.mark.parametrize("url", PRIVATE)
def test_given_a_private_destination_when_an_endpoint_is_created_then_it_is_refused(api, url):
    response = api.post("/api/v1/webhook-endpoints", {"url": url}, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", PRIVATE[:4])
def test_given_a_public_endpoint_when_its_url_is_changed_to_a_private_one_then_it_is_refused(
    api, merchant, url
):
    endpoint, _ = webhook_endpoint_create(owner=merchant.public_id, url="https://93.184.215.14/h")

    response = api.patch(
        f"/api/v1/webhook-endpoints/{endpoint.public_id}", {"url": url}, format="json"
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "url_not_allowed"
    endpoint.refresh_from_db()
    assert endpoint.url == "https://93.184.215.14/h"


def test_given_an_endpoint_that_became_private_when_a_delivery_is_sent_then_nothing_is_posted(
    merchant, settings
):
    with Receiver() as receiver:
        settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = True
        webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
        settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False  # e.g. its name now resolves inside
        event = Event.objects.get(
            subject=make_payment(merchant=merchant).public_id, type="payment.created"
        )
        (delivery,) = deliveries_create(event=event)

        status = webhook_deliver(delivery_id=delivery.pk)

        assert receiver.requests == []
    assert status == WebhookDelivery.Status.FAILED
    delivery.refresh_from_db()
    assert "private" in delivery.last_error
