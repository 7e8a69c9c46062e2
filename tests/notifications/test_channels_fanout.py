"""Dispatched events reach the Channels groups of their payment and merchant (channels-redis)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from notifications.dispatcher import dispatch_events
from notifications.models import Event
from tests.factories import make_payment

pytestmark = pytest.mark.django_db


def test_a_payment_event_reaches_its_payment_and_merchant_groups(merchant):
    layer = get_channel_layer()
    payment_channel = async_to_sync(layer.new_channel)()
    merchant_channel = async_to_sync(layer.new_channel)()
    payment = make_payment(merchant=merchant)
    async_to_sync(layer.group_add)(f"payment.{payment.public_id}", payment_channel)
    async_to_sync(layer.group_add)(f"merchant.{merchant.public_id}", merchant_channel)
    event = Event.objects.get(subject=payment.public_id, type="payment.created")

    dispatched = dispatch_events(event_ids=[event.pk])

    assert dispatched == 1
    for channel in (payment_channel, merchant_channel):
        message = async_to_sync(layer.receive)(channel)
        assert message["type"] == "event.message"
        assert message["event"]["id"] == event.public_id
        assert message["event"]["sequence"] == 1
        assert message["event"]["data"]["payment"]["id"] == payment.public_id
    event.refresh_from_db()
    assert event.dispatched_at is not None
    assert dispatch_events(event_ids=[event.pk]) == 0  # idempotent: dispatched once
