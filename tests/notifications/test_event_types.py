"""The registry of event types: apps declare their types and priorities once; the outbox, the
API and the admin form read them from it."""

from __future__ import annotations

import pytest
from django.db import transaction

from notifications import event_types
from notifications.admin import WebhookEndpointForm
from notifications.api.serializers import WebhookEndpointCreateSerializer
from notifications.models import Priority
from notifications.outbox import event_publish
from payments.event_types import PRIORITIES


def test_given_the_apps_loaded_then_every_payments_event_type_is_registered_with_its_priority():
    for type, priority in PRIORITIES.items():
        assert event_types.event_priority(type) == priority
    assert set(PRIORITIES) <= set(event_types.event_types())
    assert event_types.event_priority("payment.status_changed") == Priority.HIGH
    assert event_types.event_priority("exchange_rate.updated") == Priority.LOW


def test_given_an_unregistered_type_then_its_priority_is_normal():
    assert event_types.event_priority("nobody.declared_this") == Priority.NORMAL


def test_when_a_type_is_registered_again_with_another_priority_then_it_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        event_types.event_type_register(type="payment.status_changed", priority=Priority.LOW)
    # The same declaration again is harmless (a second ``ready``).
    event_types.event_type_register(type="payment.status_changed", priority=Priority.HIGH)


def test_when_a_priority_is_unknown_then_registering_is_refused():
    with pytest.raises(ValueError, match="unknown priority"):
        event_types.event_type_register(type="x.y", priority="urgent")


@pytest.mark.django_db
def test_when_an_event_is_published_then_it_carries_its_registered_priority():
    with transaction.atomic():
        high = event_publish(owner="mer_x", type="transaction.detected", data={})
        low = event_publish(owner="", type="exchange_rate.updated", data={})
    assert (high.priority, low.priority) == (Priority.HIGH, Priority.LOW)


def test_the_api_and_the_admin_form_offer_the_registered_types():
    registered = event_types.event_types()
    api_field = WebhookEndpointCreateSerializer().fields["event_types"]
    assert sorted(api_field.child.choices) == registered
    assert api_field.max_length == len(registered)
    form_choices = [value for value, _ in WebhookEndpointForm().fields["event_types"].choices]
    assert form_choices == registered
