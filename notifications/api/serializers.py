"""Webhook endpoints, deliveries and events as the API shows them. The encrypted signing secrets
never leave the database; the plain secret appears only in the create and rotate answers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.api_fields import StrictBooleanField, StrictCharField, StrictSerializer
from notifications.event_types import event_types
from notifications.models import Event, Priority, WebhookAttempt, WebhookDelivery, WebhookEndpoint


def _event_types_field(**kwargs: Any) -> serializers.ListField:
    """A list of registered event types. Built per serializer instance: apps register their
    types in their ``ready``, which may come after this module is imported."""
    return serializers.ListField(child=serializers.ChoiceField(choices=event_types()), **kwargs)


EVENT_TYPES_HELP = (
    "The event types sent to this endpoint; empty: every type of your own events. "
    "System-wide events (exchange_rate.updated) are sent only when listed."
)


# --- requests -----------------------------------------------------------------------------------


class WebhookUrlField(serializers.URLField):
    """An http(s) URL whose port, if any, is a real port (urlsplit raises on 99999, and the
    destination check would turn that into a 500)."""

    default_error_messages = {"invalid_port": "The port must be between 1 and 65535."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 2000)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        url = super().to_internal_value(data)
        try:
            port = urlsplit(url).port
        except ValueError:
            self.fail("invalid_port")
        if port == 0:
            self.fail("invalid_port")
        return url


class _EndpointFields(StrictSerializer):
    url = WebhookUrlField(
        help_text="Where events are POSTed: http(s), on a public address (private, loopback and "
        "link-local destinations are refused)."
    )
    event_types = serializers.ListField(help_text=EVENT_TYPES_HELP)  # set per instance
    description = StrictCharField(allow_blank=True, max_length=200)
    enabled = StrictBooleanField(help_text="A disabled endpoint receives nothing.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["event_types"] = _event_types_field(
            allow_empty=True, max_length=len(event_types()), help_text=EVENT_TYPES_HELP
        )


class WebhookEndpointCreateSerializer(_EndpointFields):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["event_types"].required = False
        self.fields["event_types"].default = list
        self.fields["description"].required = False
        self.fields["description"].default = ""
        self.fields["enabled"].required = False
        self.fields["enabled"].default = True


class WebhookEndpointUpdateSerializer(_EndpointFields):
    """Every field optional: what is sent changes, the rest stays."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False


class EventRedeliverSerializer(StrictSerializer):
    endpoint = StrictCharField(
        required=False,
        max_length=32,
        help_text="A webhook endpoint id (we_…): redeliver to it only. Omitted: every delivery "
        "of the event to your enabled endpoints.",
    )


# --- responses ----------------------------------------------------------------------------------


class WebhookEndpointSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    event_types = serializers.ListField(help_text="Empty: every type.")  # set per instance
    livemode = serializers.BooleanField(
        read_only=True,
        help_text="False: a test endpoint (made with a test key); it gets test events only.",
    )
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True,
        help_text="After a rotation, when deliveries stop being signed with the previous secret "
        "too.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "object",
            "livemode",
            "url",
            "description",
            "event_types",
            "enabled",
            "created_at",
            "previous_secret_expires_at",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["event_types"] = _event_types_field(help_text="Empty: every type.")

    @extend_schema_field(OpenApiTypes.STR)
    def get_object(self, endpoint: WebhookEndpoint) -> str:
        return "webhook_endpoint"


class WebhookEndpointWithSecretSerializer(WebhookEndpointSerializer):
    secret = serializers.SerializerMethodField(
        help_text="The signing secret (whsec_…). Shown only in this answer: store it now."
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]

    @extend_schema_field(OpenApiTypes.STR)
    def get_secret(self, endpoint: WebhookEndpoint) -> str:
        return self.context["secret"]


class WebhookEndpointListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = WebhookEndpointSerializer(many=True)  # type: ignore[assignment]  # DRF moves declared fields off the class
    has_more = serializers.BooleanField()


class WebhookAttemptSerializer(serializers.ModelSerializer):
    status_code = serializers.IntegerField(
        allow_null=True, help_text="The receiver's HTTP status; null when it never answered."
    )
    latency_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(help_text="Why the attempt failed without an answer, if so.")

    class Meta:
        model = WebhookAttempt
        fields = ["attempted_at", "status_code", "latency_ms", "error"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    endpoint = serializers.CharField(source="endpoint.public_id", help_text="we_…")
    event = serializers.CharField(
        source="event.public_id",
        help_text="evt_…; with the endpoint, this identifies the delivery.",
    )
    event_type = serializers.CharField(source="event.type")
    status = serializers.ChoiceField(
        choices=WebhookDelivery.Status.choices,
        help_text="pending (being retried), succeeded, failed (a final answer such as 4xx, not "
        "retried) or gave_up (retries exhausted).",
    )
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    last_latency_ms = serializers.IntegerField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    attempt_log = WebhookAttemptSerializer(source="log", many=True, help_text="Oldest first.")

    class Meta:
        model = WebhookDelivery
        fields = [
            "object",
            "endpoint",
            "event",
            "event_type",
            "status",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "last_latency_ms",
            "delivered_at",
            "created_at",
            "attempt_log",
        ]

    @extend_schema_field(OpenApiTypes.STR)
    def get_object(self, delivery: WebhookDelivery) -> str:
        return "webhook_delivery"


class WebhookDeliveryListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = WebhookDeliverySerializer(many=True)  # type: ignore[assignment]  # DRF moves declared fields off the class
    has_more = serializers.BooleanField()


class EventSerializer(serializers.ModelSerializer):
    """The webhook envelope (what receivers get), plus priority and deliveries."""

    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    type = serializers.CharField(help_text="e.g. payment.created, payment.status_changed.")
    priority = serializers.ChoiceField(choices=Priority.choices)
    subject = serializers.SerializerMethodField(
        help_text="What the event is about (a payment id), null if nothing in particular."
    )
    sequence = serializers.IntegerField(help_text="Position in the subject's stream.")
    livemode = serializers.BooleanField(help_text="False: a test-mode event (a test key's).")
    data = serializers.DictField(  # type: ignore[assignment]  # DRF moves declared fields off the class
        help_text="The event's payload, as sent in webhooks."
    )
    deliveries = WebhookDeliverySerializer(
        many=True, help_text="Its deliveries to your webhook endpoints."
    )

    class Meta:
        model = Event
        fields = [
            "id",
            "object",
            "type",
            "priority",
            "created_at",
            "subject",
            "sequence",
            "livemode",
            "data",
            "deliveries",
        ]

    @extend_schema_field(OpenApiTypes.STR)
    def get_object(self, event: Event) -> str:
        return "event"

    @extend_schema_field({"type": "string", "nullable": True})
    def get_subject(self, event: Event) -> str | None:
        return event.subject or None


class EventListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = EventSerializer(many=True)  # type: ignore[assignment]  # DRF moves declared fields off the class
    has_more = serializers.BooleanField()
