"""Celery entry points for notifications."""

from celery import shared_task

from notifications import services


@shared_task(ignore_result=True)
def webhooks_deliver_due() -> int:
    # Idempotent: due deliveries are claimed with SKIP LOCKED and pushed out before sending.
    return services.webhooks_deliver_due()


@shared_task(ignore_result=True)
def events_requeue_lost() -> int:
    # Idempotent: dispatching an event twice changes nothing.
    return services.events_requeue_lost()
