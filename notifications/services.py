"""Writes for notifications: publish events (outbox), manage webhook endpoints, deliver webhooks."""

from __future__ import annotations

import functools
import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from prometheus_client import Counter

from notifications import destinations, queues, secrets, signing
from notifications.destinations import DestinationRefused
from notifications.models import (
    Event,
    Priority,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from resilience import clock
from resilience.breaker import BrokenCircuitError, breaker_options_from_settings, get_breaker

logger = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = Counter(
    "cryptopay_webhook_delivery_attempts",
    "Webhook delivery attempts by what became of the delivery: succeeded, failed (final), "
    "retrying (scheduled again), gave_up (retry window over).",
    ["outcome"],
)
DELIVERY_OUTCOMES = ("succeeded", "failed", "retrying", "gave_up")

# The seed's priorities.
PRIORITIES: dict[str, str] = {
    "payment.status_changed": Priority.HIGH,
    "transaction.detected": Priority.HIGH,
    # A wrong asset reached a payment's address: the merchant has to act (refund or mark).
    "transaction.unmatched": Priority.HIGH,
    "payment.created": Priority.NORMAL,
    "payment.expired": Priority.NORMAL,
    "exchange_rate.updated": Priority.LOW,
}
EVENT_TYPES = sorted(PRIORITIES)


# --- events -------------------------------------------------------------------------------------


def event_publish(
    *, owner: str, type: str, subject: str = "", sequence: int = 0, data: dict[str, Any]
) -> Event:
    """Write the event in the caller's transaction; queue it once that transaction commits."""
    event = Event.objects.create(
        owner=owner,
        type=type,
        priority=PRIORITIES.get(type, Priority.NORMAL),
        subject=subject,
        sequence=sequence,
        data=data,
        created_at=clock.now(),
    )
    transaction.on_commit(lambda: queues.enqueue(event_id=event.pk, priority=event.priority))
    return event


def events_requeue_lost() -> int:
    """Queue again the events no dispatcher has handled for NOTIFY_REQUEUE_AFTER (Redis lost them,
    or a dispatcher died holding them). Dispatching is idempotent, so a duplicate costs nothing."""
    cutoff = clock.now() - settings.NOTIFY_REQUEUE_AFTER
    if sum(queues.sizes().values()) > 0:
        # A backlog is still draining: its events are queued, not lost. Only long-stuck ones
        # (a dispatcher died holding them) are worth queueing again now.
        cutoff = clock.now() - settings.NOTIFY_REQUEUE_AFTER * 10
    lost = list(
        Event.objects.filter(dispatched_at__isnull=True, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", "priority")[:10_000]
    )
    for event_id, priority in lost:
        queues.enqueue(event_id=event_id, priority=priority)  # dispatching twice is harmless
    if lost:
        logger.warning("re-queued %d undispatched events from the outbox", len(lost))
    return len(lost)


# --- webhook endpoints --------------------------------------------------------------------------


def webhook_url_check(url: str) -> None:
    """Refuse URLs that are not valid http(s) or that resolve to private, loopback, link-local or
    reserved addresses (SSRF), unless WEBHOOK_ALLOW_PRIVATE_DESTINATIONS."""
    destinations.destination_check(url=url)


def webhook_endpoint_create(
    *, owner: str, url: str, event_types: list[str] | None = None, description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint; returns it with its signing secret (shown once, stored encrypted)."""
    webhook_url_check(url)
    secret = secrets.new_secret()
    endpoint = WebhookEndpoint.objects.create(
        owner=owner,
        url=url,
        description=description,
        event_types=sorted(set(event_types or [])),
        secret_encrypted=secrets.encrypt(secret),
    )
    return endpoint, secret


def webhook_endpoint_rotate_secret(
    *, endpoint: WebhookEndpoint, overlap: timedelta = timedelta(hours=24)
) -> str:
    """New secret; the old one stays valid (both signatures sent) for ``overlap``."""
    secret = secrets.new_secret()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = clock.now() + overlap
    endpoint.secret_encrypted = secrets.encrypt(secret)
    endpoint.save(
        update_fields=[
            "secret_encrypted",
            "previous_secret_encrypted",
            "previous_secret_expires_at",
        ]
    )
    return secret


def signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    keys = [secrets.decrypt(endpoint.secret_encrypted)]
    if (
        endpoint.previous_secret_encrypted
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > clock.now()
    ):
        keys.append(secrets.decrypt(endpoint.previous_secret_encrypted))
    return keys


# --- deliveries ---------------------------------------------------------------------------------


def deliveries_create(*, event: Event) -> list[WebhookDelivery]:
    """One delivery per interested endpoint; idempotent (unique on endpoint and event)."""
    created = []
    endpoints = WebhookEndpoint.objects.filter(enabled=True)
    if event.owner:
        endpoints = endpoints.filter(owner=event.owner)
    for endpoint in endpoints:
        if not endpoint.wants(event.type):
            continue
        if not event.owner and event.type not in endpoint.event_types:
            continue  # system-wide events (rates) go only to endpoints that ask for them
        try:
            with transaction.atomic():
                created.append(
                    WebhookDelivery.objects.create(
                        endpoint=endpoint,
                        event=event,
                        next_attempt_at=clock.now(),
                        created_at=clock.now(),
                    )
                )
        except IntegrityError:
            # Already there. Never attempted means the dispatcher that made it died first:
            # attempt it now rather than at the sweep (a duplicate POST is what at-least-once
            # allows; receivers deduplicate by Webhook-Id).
            existing = WebhookDelivery.objects.filter(
                endpoint=endpoint, event=event, status=WebhookDelivery.Status.PENDING, attempts=0
            ).first()
            if existing is not None:
                created.append(existing)
    return created


def _retryable(status_code: int | None) -> bool:
    """Network errors (no status), 5xx, 408 and 429 are retried; other answers are final."""
    return status_code is None or status_code >= 500 or status_code in (408, 429)


def backoff(attempts: int) -> timedelta:
    """Exponential with full jitter: initial * 2^(attempts-1), capped."""
    base = settings.WEBHOOK_RETRY_INITIAL.total_seconds() * (2 ** max(0, attempts - 1))
    capped = min(base, settings.WEBHOOK_RETRY_MAX.total_seconds())
    return timedelta(seconds=capped / 2 + random.uniform(0, capped / 2))  # noqa: S311 - jitter


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str
    latency_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class ReceiverFailed(Exception):
    """A retryable failure, counted by the endpoint's breaker."""


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default verification context, built once: ``httpx.post`` builds a new one per call
    (loading the CA bundle, ~35 ms), which capped a dispatcher at ~25 deliveries per second."""
    return httpx.create_ssl_context()


def _post(endpoint: WebhookEndpoint, body: bytes, event: Event) -> AttemptResult:
    # Checked again at send time, and sent to the address checked: DNS may have changed (rebinding).
    destination = destinations.destination_resolve(url=endpoint.url)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "cryptopay-webhooks/1.0",
        "Webhook-Id": event.public_id,
        signing.HEADER: signing.sign(
            body=body, secrets=signing_secrets(endpoint), timestamp=int(clock.now().timestamp())
        ),
    }
    started = time.perf_counter()
    try:
        response = destinations.pinned_post(
            destination=destination,
            content=body,
            headers=headers,
            timeout=settings.WEBHOOK_TIMEOUT.total_seconds(),
            verify=_tls(),
        )
    except httpx.HTTPError as exc:
        latency = int((time.perf_counter() - started) * 1000)
        raise ReceiverFailed(AttemptResult(None, f"{exc.__class__.__name__}: {exc}"[:500], latency))
    latency = int((time.perf_counter() - started) * 1000)
    result = AttemptResult(response.status_code, "", latency)
    if _retryable(response.status_code):
        raise ReceiverFailed(result)
    return result


def webhook_deliver(*, delivery_id: int, immediate_retries: int = 0) -> str:
    """Attempt one delivery now (plus ``immediate_retries`` quick retries); record every attempt,
    then schedule the next try, or finish. Returns the delivery's status."""
    delivery = WebhookDelivery.objects.select_related("endpoint", "event").get(pk=delivery_id)
    if delivery.status != WebhookDelivery.Status.PENDING:
        return delivery.status
    endpoint, event = delivery.endpoint, delivery.event
    if not endpoint.enabled:
        _record(
            delivery,
            AttemptResult(None, "endpoint disabled", 0),
            final=WebhookDelivery.Status.FAILED,
        )
        return delivery.status
    body = _json(event.envelope())
    breaker = get_breaker(
        f"webhook:{endpoint.public_id}",
        breaker_options_from_settings(is_failure=lambda exc: isinstance(exc, ReceiverFailed)),
    )
    for _attempt in range(1 + immediate_retries):
        try:
            result = breaker.call(_post, endpoint, body, event)
        except ReceiverFailed as exc:
            result = exc.args[0]
        except BrokenCircuitError as exc:
            result = AttemptResult(
                None, f"circuit open for this endpoint ({exc.retry_after:.0f} s)", 0
            )
        except DestinationRefused as exc:
            result = AttemptResult(None, str(exc), 0)
            _record(delivery, result, final=WebhookDelivery.Status.FAILED)
            return delivery.status
        except ValueError as exc:  # the secret cannot be decrypted: an operator must fix it
            result = AttemptResult(None, str(exc)[:500], 0)
        if result.ok:
            _record(delivery, result, final=WebhookDelivery.Status.SUCCEEDED)
            return delivery.status
        if not _retryable(result.status_code):
            _record(delivery, result, final=WebhookDelivery.Status.FAILED)
            return delivery.status
        _record(delivery, result, final=None)
        if "circuit open" in result.error or delivery.status != WebhookDelivery.Status.PENDING:
            break  # quick retries would only be rejected too, or it is over
    return delivery.status


def _record(delivery: WebhookDelivery, result: AttemptResult, *, final: str | None) -> None:
    """Log the attempt and move the delivery on, re-reading it under a row lock: a parallel
    attempt (a sweep, a manual redelivery) may have finished it meanwhile, and a success is never
    overwritten by a later failure."""
    now = clock.now()
    with transaction.atomic():
        current = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        WebhookAttempt.objects.create(
            delivery=current, attempted_at=now, status_code=result.status_code,
            latency_ms=result.latency_ms, error=result.error,
        )  # fmt: skip
        current.attempts += 1
        current.last_status_code = result.status_code
        current.last_error = result.error
        current.last_latency_ms = result.latency_ms
        if current.status != WebhookDelivery.Status.PENDING:
            pass  # already finished by a parallel attempt: keep its outcome
        elif final is not None:
            current.status = final
            current.next_attempt_at = None
            if final == WebhookDelivery.Status.SUCCEEDED:
                current.delivered_at = now
        else:
            next_at = now + backoff(current.attempts)
            if next_at > delivery.event.created_at + settings.WEBHOOK_RETRY_FOR:
                current.status = WebhookDelivery.Status.GAVE_UP
                current.next_attempt_at = None
            else:
                current.next_attempt_at = next_at
        current.save()
    DELIVERY_ATTEMPTS.labels(
        "retrying" if current.status == WebhookDelivery.Status.PENDING else current.status
    ).inc()
    delivery.refresh_from_db()
    if final != WebhookDelivery.Status.SUCCEEDED:
        logger.info(
            "webhook %s to %s: attempt %d %s", delivery.event.public_id,
            delivery.endpoint.public_id, delivery.attempts, result.status_code or result.error,
        )  # fmt: skip


SWEEP_WORKERS = 8


def webhooks_deliver_due(*, limit: int = 64) -> int:
    """Attempt every delivery whose retry time has come, several at once. Rows another worker
    holds are skipped and claimed rows are pushed out for the sweep's duration, and each delivery
    keeps its own schedule: a dead endpoint never delays another."""
    rounds = -(-limit // SWEEP_WORKERS)
    with transaction.atomic():
        due = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=clock.now())
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        WebhookDelivery.objects.filter(pk__in=due).update(
            next_attempt_at=clock.now() + settings.WEBHOOK_TIMEOUT * (rounds + 1)
        )
    if len(due) <= 1 or transaction.get_connection().in_atomic_block:
        for delivery_id in due:
            webhook_deliver(delivery_id=delivery_id)
        return len(due)
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def deliver(delivery_id: int) -> None:
        try:
            webhook_deliver(delivery_id=delivery_id)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=SWEEP_WORKERS, thread_name_prefix="sweep") as pool:
        list(pool.map(deliver, due))
    return len(due)


def webhook_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Manual redelivery: back to pending, due now (also after success or giving up)."""
    with transaction.atomic():
        WebhookDelivery.objects.select_for_update().filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at=clock.now() + settings.WEBHOOK_TIMEOUT * 3,
        )
    webhook_deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _json(envelope: dict[str, Any]) -> bytes:
    import json

    return json.dumps(envelope, cls=DjangoJSONEncoder, separators=(",", ":")).encode()
