"""Writes of webhook endpoints: create (the signing secret is returned once and stored
encrypted), update, delete and secret rotation. The API and the admin call these and write
nothing themselves."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction

from notifications import destinations, endpoint_secrets
from notifications.models import WebhookEndpoint
from resilience import clock


def webhook_url_check(url: str) -> None:
    """Refuse URLs that are not valid http(s) or that resolve to private, loopback, link-local or
    reserved addresses (SSRF), unless WEBHOOK_ALLOW_PRIVATE_DESTINATIONS."""
    destinations.destination_check(url=url)


def webhook_endpoint_create(
    *,
    owner: str,
    url: str,
    event_types: list[str] | None = None,
    description: str = "",
    enabled: bool = True,
    livemode: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint; returns it with its signing secret (shown once, stored encrypted).
    ``livemode`` False: a test endpoint, which gets the owner's test events and no live ones."""
    webhook_url_check(url)
    secret = endpoint_secrets.new_secret()
    endpoint = WebhookEndpoint.objects.create(
        owner=owner,
        livemode=livemode,
        url=url,
        description=description,
        event_types=sorted(set(event_types or [])),
        enabled=enabled,
        secret_encrypted=endpoint_secrets.encrypt(secret),
    )
    return endpoint, secret


def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    description: str | None = None,
    event_types: list[str] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change the fields given (None: unchanged; the owner never changes, or the endpoint would
    receive another merchant's events). A new URL is checked as on creation. Writes only the
    fields given; nothing when none are."""
    changes: dict[str, object] = {}
    if url is not None:
        webhook_url_check(url)
        changes["url"] = url
    if description is not None:
        changes["description"] = description
    if event_types is not None:
        changes["event_types"] = sorted(set(event_types))
    if enabled is not None:
        changes["enabled"] = enabled
    for name, value in changes.items():
        setattr(endpoint, name, value)
    if changes:
        endpoint.save(update_fields=list(changes))
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its deliveries and their attempt logs."""
    with transaction.atomic():
        endpoint.delete()


def webhook_endpoint_rotate_secret(
    *, endpoint: WebhookEndpoint, overlap: timedelta = timedelta(hours=24)
) -> str:
    """New secret; the old one stays valid (both signatures sent) for ``overlap``."""
    secret = endpoint_secrets.new_secret()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = clock.now() + overlap
    endpoint.secret_encrypted = endpoint_secrets.encrypt(secret)
    endpoint.save(
        update_fields=[
            "secret_encrypted",
            "previous_secret_encrypted",
            "previous_secret_expires_at",
        ]
    )
    return secret
