"""Celery entry points: thin wrappers around services."""

from celery import shared_task

from payments.services import payments_expire_due as _payments_expire_due


@shared_task(ignore_result=True)
def payments_expire_due() -> dict[str, int]:
    # Idempotent: a second run finds nothing left to move.
    return _payments_expire_due()
