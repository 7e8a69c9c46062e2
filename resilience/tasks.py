"""Celery entry points for resilience mechanisms."""

from celery import shared_task

from resilience.degradation import dependencies_monitor as _dependencies_monitor
from resilience.degradation import dependencies_recover as _dependencies_recover
from resilience.idempotency import idempotency_keys_cleanup as _idempotency_keys_cleanup
from resilience.timeseries import sample as _timeseries_sample


@shared_task(ignore_result=True)
def idempotency_keys_cleanup() -> int:
    # Idempotent: deleting what is already deleted does nothing.
    return _idempotency_keys_cleanup()


@shared_task(ignore_result=True, soft_time_limit=60)
def dependencies_monitor() -> dict[str, str]:
    # Idempotent: a probe changes nothing; two runs at once only write the same levels twice.
    return _dependencies_monitor()


@shared_task(ignore_result=True, soft_time_limit=100)
def dependencies_recover() -> dict[str, str]:
    # Each action is safe to repeat (reconnect, isolate/close a breaker, refresh a cache entry).
    return _dependencies_recover()


@shared_task(ignore_result=True, soft_time_limit=20)
def timeseries_sample() -> int:
    # Not retried: a missed point is a gap in a sparkline, the next run writes the next one.
    return _timeseries_sample()
