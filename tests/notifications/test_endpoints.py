"""Webhook endpoint writes: create (enabled or not), update only what is given (a new URL checked
as on creation), delete with deliveries."""

from __future__ import annotations

import pytest

from notifications.delivery import deliveries_create
from notifications.destinations import DestinationRefused
from notifications.endpoints import (
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_update,
)
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from tests.factories import MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

NOWHERE = "http://127.0.0.1:9/hooks"


def test_when_created_disabled_then_it_is_stored_disabled_in_one_write():
    endpoint, _ = webhook_endpoint_create(owner="mer_x", url=NOWHERE, enabled=False)
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).enabled is False


def test_when_updated_then_only_the_given_fields_change_and_types_are_deduplicated():
    endpoint, _ = webhook_endpoint_create(
        owner="mer_x", url=NOWHERE, description="orders", event_types=["payment.created"]
    )
    webhook_endpoint_update(
        endpoint=endpoint, event_types=["payment.expired", "payment.created", "payment.expired"]
    )
    stored = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert stored.event_types == ["payment.created", "payment.expired"]
    assert (stored.url, stored.description, stored.enabled) == (NOWHERE, "orders", True)
    webhook_endpoint_update(endpoint=endpoint, enabled=False, description="")
    stored = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert (stored.enabled, stored.description) == (False, "")


def test_given_private_destinations_refused_when_the_url_changes_to_one_then_nothing_is_written(
    settings,
):
    endpoint, _ = webhook_endpoint_create(owner="mer_x", url=NOWHERE)
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False
    with pytest.raises(DestinationRefused):
        webhook_endpoint_update(endpoint=endpoint, url="http://10.0.0.1/hook", enabled=False)
    stored = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert (stored.url, stored.enabled) == (NOWHERE, True)


def test_when_deleted_then_its_deliveries_go_with_it():
    merchant = MerchantFactory.create()
    endpoint, _ = webhook_endpoint_create(owner=merchant.public_id, url=NOWHERE)
    payment = make_payment(merchant=merchant)
    deliveries_create(event=Event.objects.get(subject=payment.public_id))
    assert WebhookDelivery.objects.filter(endpoint=endpoint).exists()
    webhook_endpoint_delete(endpoint=endpoint)
    assert not WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()
    assert not WebhookDelivery.objects.filter(endpoint_id=endpoint.pk).exists()
