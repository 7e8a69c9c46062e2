from __future__ import annotations

from django.db import models


class IdempotencyKey(models.Model):
    """The arbiter of an idempotent request: one row per (owner, key).

    ``version`` is a fencing token: whoever claims (or takes over an abandoned) key bumps it, and
    only the holder of the current version may complete or release it.
    """

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"

    owner = models.CharField(max_length=64, help_text="Whose key: e.g. a merchant id.")
    key = models.CharField(max_length=255)
    automatic = models.BooleanField(default=False, help_text="Derived from the request body.")
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    status = models.CharField(max_length=20, choices=Status.choices)
    version = models.PositiveIntegerField(default=1)
    locked_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.BinaryField(null=True, blank=True)
    response_sealed = models.BooleanField(
        default=False, help_text="The body is encrypted: the answer carries a secret."
    )
    replays = models.PositiveIntegerField(default=0)
    conflicts = models.PositiveIntegerField(default=0)
    mismatches = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "key"], name="idempotency_owner_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.owner}:{self.key}"


class DependencyState(models.Model):
    """A dependency's last known level and its recovery history (resilience/degradation.py).

    Written by the monitoring and recovery tasks; read by the dashboard and the health pages.
    """

    class Level(models.TextChoices):
        HEALTHY = "healthy", "Healthy"
        DEGRADED = "degraded", "Degraded"
        CRITICAL = "critical", "Critical"
        UNKNOWN = "unknown", "Unknown"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=40, blank=True)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.UNKNOWN)
    reason = models.CharField(max_length=500, blank=True)
    level_since = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    probe_ms = models.PositiveIntegerField(null=True, blank=True)
    diagnostics = models.JSONField(default=dict, blank=True)
    recovery_isolated = models.BooleanField(
        default=False, help_text="Its breaker was isolated by recovery (switched to a backup)."
    )
    recovery_attempts = models.PositiveIntegerField(default=0)
    recovery_failures = models.PositiveIntegerField(default=0)
    last_recovery_at = models.DateTimeField(null=True, blank=True)
    last_recovery_outcome = models.CharField(max_length=20, blank=True)
    last_recovery_detail = models.CharField(max_length=500, blank=True)

    class Meta:
        # Breakers have no table; their operator actions hang off the dependencies they protect.
        permissions = [("change_breaker", "Can isolate and close circuit breakers")]

    def __str__(self) -> str:
        return f"{self.name}: {self.level}"


class BreakerIsolation(models.Model):
    """A circuit breaker held open (isolated) by an operator or by recovery, until closed.

    Redis shares the state with every process; this row is what survives Redis losing it.
    """

    name = models.CharField(max_length=300, unique=True)
    isolated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} isolated since {self.isolated_at}"
