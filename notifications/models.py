from __future__ import annotations

from django.db import models

from accounts.models import random_token


def _token(prefix: str, length: int = 24) -> str:
    return prefix + random_token(length)


def clock_now():
    from resilience import clock

    return clock.now()


def new_event_id() -> str:
    return _token("evt_")


def new_endpoint_id() -> str:
    return _token("we_")


class Priority(models.TextChoices):
    HIGH = "high", "High"
    NORMAL = "normal", "Normal"
    LOW = "low", "Low"


# Sortable ranks: the names sort high, low, normal.
# By the stored value (a str: what ``Event.priority`` reads back).
PRIORITY_RANK: dict[str, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class Event(models.Model):
    """The outbox: written in the same transaction as the change it describes, then queued.

    ``owner`` is whose event it is (a merchant's public id; empty for system-wide events such as
    rate updates); ``subject`` what it is about (a payment id, a rate pair) and ``sequence`` its
    position in that subject's stream, so receivers can order what they get. ``livemode`` False:
    a test-mode event, delivered only to the owner's test endpoints and test stream.
    """

    # Unique by a constraint in Meta, not unique=True, which adds on PostgreSQL a second index for
    # LIKE 'prefix%' that no query here makes, written with every event all the same.
    public_id = models.CharField(max_length=32, default=new_event_id, editable=False)
    # No index of its own (nor its LIKE twin): event_owner_mode_created and
    # event_stream_position_unique lead with it, and every payment event is inserted here.
    owner = models.CharField(max_length=64, blank=True)
    type = models.CharField(max_length=60)
    priority = models.CharField(max_length=10, choices=Priority.choices)
    subject = models.CharField(max_length=64, blank=True)
    sequence = models.PositiveIntegerField(default=0)
    livemode = models.BooleanField(default=True)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When a dispatcher fanned it out (null: still to do)."
    )
    stream_position = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Its place in the owner's live stream (one per mode): 1, 2, 3… in dispatch order.",
    )

    class Meta:
        constraints = [
            # Named as unique=True named it, so the database keeps its own (see public_id).
            models.UniqueConstraint(fields=["public_id"], name="notifications_event_public_id_key"),
            models.UniqueConstraint(
                fields=["owner", "livemode", "stream_position"],
                name="event_stream_position_unique",
            ),
        ]
        indexes = [
            models.Index(
                fields=["owner", "livemode", "-created_at"], name="event_owner_mode_created"
            ),
            # Live-stream replay: a payment's stream by sequence (a merchant's uses the constraint).
            models.Index(fields=["subject", "sequence"], name="event_subject_sequence"),
            models.Index(
                fields=["created_at"],
                name="event_undispatched",
                condition=models.Q(dispatched_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"

    # envelope(), once built.
    _envelope: dict | None = None

    def envelope(self) -> dict:
        """What a webhook or a browser receives (do not change it: it is shared).

        Built once per instance: none of its fields changes once the event is written (dispatch
        sets stream_position and dispatched_at, which are not in it), and a dispatcher sends each
        event both to browsers and to webhooks, where formatting ``created_at`` twice was 6 % of
        its work per event."""
        if self._envelope is None:
            self._envelope = {
                "id": self.public_id,
                "object": "event",
                "type": self.type,
                "created_at": self.created_at.isoformat(),
                "subject": self.subject or None,
                "sequence": self.sequence,
                "livemode": self.livemode,
                "data": self.data,
            }
        return self._envelope


class EventStream(models.Model):
    """The last position given in an owner's live stream of one mode (a row lock orders the
    dispatchers): test events are numbered apart, so each mode's stream has no gaps."""

    owner = models.CharField(max_length=64)
    livemode = models.BooleanField(default=True)
    position = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "livemode"], name="event_stream_unique")
        ]

    def __str__(self) -> str:
        return f"{self.owner}{'' if self.livemode else ' (test)'}@{self.position}"


class WebhookEndpoint(models.Model):
    public_id = models.CharField(
        max_length=32, unique=True, default=new_endpoint_id, editable=False
    )
    owner = models.CharField(max_length=64, db_index=True)
    # False: a test-mode endpoint, which gets the owner's test events only (and live ones never).
    livemode = models.BooleanField(default=True)
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(default=list, blank=True, help_text="Empty: every type.")
    enabled = models.BooleanField(default=True)
    # Encrypted at rest (notifications.endpoint_secrets); the plain secret is shown once.
    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock_now)

    def __str__(self) -> str:
        return f"{self.public_id} {self.url}"

    def wants(self, event_type: str) -> bool:
        return self.enabled and (not self.event_types or event_type in self.event_types)


class WebhookDelivery(models.Model):
    """One event to one endpoint: durable, retried on its own schedule, never blocking others."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (not retried)"
        GAVE_UP = "gave_up", "Gave up after retries"

    # Indexed by delivery_unique, which leads with it.
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    priority = models.PositiveSmallIntegerField(
        default=1, help_text="The event's rank (0 High, 1 Normal, 2 Low): the sweep's order."
    )
    # One sender at a time: a claim sets ``claimed_until`` (a lease) and bumps ``claim`` (the
    # holder's token) in one compare-and-set; only the holder records the outcome. A sender
    # that died holding a claim is replaced once the lease has passed.
    claim = models.PositiveIntegerField(default=0)
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event"], name="delivery_unique")
        ]
        indexes = [
            models.Index(
                fields=["priority", "next_attempt_at"],
                name="delivery_due_by_priority",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_id}->{self.endpoint_id} {self.status}"


class WebhookAttempt(models.Model):
    """The delivery log: every HTTP attempt, its answer and how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="log")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["attempted_at"]

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.status_code or self.error}"
