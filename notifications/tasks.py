"""Celery entry points for notifications."""

from celery import shared_task
from django.conf import settings

from notifications import delivery, outbox
from notifications.presence import connection_registry


@shared_task(ignore_result=True)
def webhooks_deliver_due() -> int:
    # Idempotent: due deliveries are claimed with SKIP LOCKED and pushed out before sending.
    return delivery.webhooks_deliver_due(
        budget_seconds=settings.WEBHOOK_SWEEP_BUDGET.total_seconds()
    )


@shared_task(ignore_result=True)
def events_requeue_lost() -> int:
    # Idempotent: dispatching an event twice changes nothing.
    return outbox.events_requeue_lost()


@shared_task(ignore_result=True)
def websocket_connections_cleanup() -> int:
    # Idempotent: removes only connections whose heartbeat stopped.
    return connection_registry().cleanup()
