"""Celery entry points: thin wrappers around services."""

from celery import shared_task

from payments.chains.watch import chains_watch_all
from payments.rates.refresh import rates_refresh_in_use as _rates_refresh_in_use
from payments.services import payments_expire_due as _payments_expire_due


@shared_task(ignore_result=True)
def payments_expire_due() -> dict[str, int]:
    # Idempotent: a second run finds nothing left to move.
    return _payments_expire_due()


@shared_task(ignore_result=True, soft_time_limit=60)
def rates_refresh_in_use() -> dict[str, str]:
    # Idempotent: refreshing a rate twice only costs a provider call.
    return _rates_refresh_in_use()


@shared_task(ignore_result=True, soft_time_limit=120)
def chains_watch() -> dict[str, int | None]:
    # Idempotent: a poll resumes from the stored cursor; an advisory lock prevents overlap.
    return chains_watch_all()
