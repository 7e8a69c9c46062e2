"""Celery entry points for resilience mechanisms."""

from celery import shared_task

from resilience.idempotency import idempotency_keys_cleanup as _idempotency_keys_cleanup


@shared_task(ignore_result=True)
def idempotency_keys_cleanup() -> int:
    # Idempotent: deleting what is already deleted does nothing.
    return _idempotency_keys_cleanup()
