"""The notifications app's dependencies for the degradation handler (resilience/degradation.py).

* ``redis:queues``: the Redis priority queues the dispatcher drains (their depths as diagnostics).
* ``webhooks:backlog``: webhook deliveries due and not yet sent. Degraded when more are due than
  the high-load threshold, or when the oldest has waited longer than BACKLOG_STUCK_AFTER (the
  retry sweep is not running or cannot keep up); deliveries are durable, so never Critical.
* ``webhooks:secrets``: degraded while an enabled endpoint's signing secret cannot be decrypted
  with any configured key (a key was rotated away): its deliveries fail until an operator restores
  the key or rotates the secret (notifications/endpoint_secrets.py).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Min

from resilience import clock
from resilience.degradation import Dependency, Probe, dependency_source_register

# A due delivery waiting this long means the 5 s retry sweep is stuck or far behind.
BACKLOG_STUCK_AFTER = timedelta(minutes=5)


def queues_probe() -> Probe:
    from notifications import queues

    client = queues.client()
    assert client is not None
    client.ping()
    return Probe.ok(**{f"queued_{name}": size for name, size in queues.sizes().items()})


def webhook_backlog_probe() -> Probe:
    from notifications.models import WebhookDelivery

    now = clock.now()
    due = WebhookDelivery.objects.filter(
        status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
    ).aggregate(count=Count("pk"), oldest=Min("next_attempt_at"))
    count = due["count"]
    waited = (now - due["oldest"]).total_seconds() if due["oldest"] else 0.0
    diagnostics = {"due": count, "oldest_due_seconds": round(waited)}
    if count > settings.NOTIFY_HIGH_LOAD_THRESHOLD:
        return Probe.degraded(f"{count} deliveries due", **diagnostics)
    if waited > BACKLOG_STUCK_AFTER.total_seconds():
        return Probe.degraded(f"oldest due delivery waited {round(waited)} s", **diagnostics)
    return Probe.ok(**diagnostics)


def webhook_secrets_probe() -> Probe:
    from notifications import endpoint_secrets
    from notifications.models import WebhookEndpoint

    endpoints = WebhookEndpoint.objects.filter(enabled=True).values_list(
        "public_id", "owner", "secret_encrypted"
    )
    checked, unreadable = 0, []
    for public_id, owner, token in endpoints.iterator():
        checked += 1
        if not endpoint_secrets.readable(token):
            unreadable.append(f"{public_id} (merchant {owner})")
    if not unreadable:
        return Probe.ok(endpoints=checked)
    return Probe.degraded(
        f"{len(unreadable)} webhook endpoint(s) with a signing secret no configured key decrypts: "
        + ", ".join(unreadable[:10])
        + ". Their deliveries fail: put the old key back in CRYPTOPAY_ENCRYPTION_KEYS or "
        "SECRET_KEY_FALLBACKS, or rotate their secrets.",
        endpoints=checked,
        unreadable=len(unreadable),
    )


def notification_dependencies() -> list[Dependency]:
    return [
        Dependency(
            name="redis:queues",
            kind="redis",
            description="Redis priority queues of the notification dispatcher",
            probe=queues_probe,
            configured=bool(settings.REDIS_URL),
        ),
        Dependency(
            name="webhooks:backlog",
            kind="webhooks",
            description="webhook deliveries due and not yet sent",
            probe=webhook_backlog_probe,
            tags=frozenset({"external"}),
            uses_database=True,
        ),
        Dependency(
            name="webhooks:secrets",
            kind="webhooks",
            description="webhook signing keys decryptable with the configured encryption keys",
            probe=webhook_secrets_probe,
            tags=frozenset({"external"}),
            uses_database=True,
        ),
    ]


def register() -> None:
    dependency_source_register(key="notifications", source=notification_dependencies)
