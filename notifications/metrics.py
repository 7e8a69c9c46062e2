"""Notification metrics sampled at scrape time (conventions: ``resilience.metrics``).

Queue sizes live in Redis and the webhook backlog in PostgreSQL, so no process can keep them up
to date as it works; ``/metrics`` reads them just before it collects, through the admin
dashboard's selectors (``notifications.load_figures``). Processing rates are the
counters where the work happens: ``cryptopay_notifications_dispatched_total`` (dispatcher) and
``cryptopay_webhook_delivery_attempts_total`` (``notifications.delivery``).

The webhook figures are live mode's: deliveries to test endpoints (a developer's receiver that is
down) are left out, so they never page an operator. Queue sizes and events dispatched count test
events too: they are the dispatcher's work, whatever the mode.
"""

from __future__ import annotations

from prometheus_client import Gauge

from notifications.delivery import DELIVERY_ATTEMPTS, DELIVERY_OUTCOMES
from notifications.dispatcher import DISPATCHED, QUEUE_SIZE
from notifications.load_figures import queue_depths, webhook_backlog
from notifications.models import Priority
from resilience.metrics import prime, register_sampler
from resilience.timeseries import register_series

WEBHOOK_BACKLOG = Gauge(
    "cryptopay_webhook_backlog",
    "Live webhook deliveries not finished yet (pending: first try or retries to come).",
    multiprocess_mode="mostrecent",
)
WEBHOOK_BACKLOG_OLDEST = Gauge(
    "cryptopay_webhook_backlog_oldest_seconds",
    "Age of the oldest unfinished live webhook delivery (0 when there is none).",
    multiprocess_mode="mostrecent",
)

prime(DISPATCHED, *[(priority,) for priority in Priority.values])
prime(DELIVERY_ATTEMPTS, *[(outcome,) for outcome in DELIVERY_OUTCOMES])


# The samplers read through the dashboard's selectors (notifications.dashboard): one query each.
def sample_queue_sizes() -> None:
    for priority, size in queue_depths().sizes.items():
        QUEUE_SIZE.labels(priority).set(size)


def sample_webhook_backlog() -> None:
    backlog = webhook_backlog()
    WEBHOOK_BACKLOG.set(backlog.pending)
    WEBHOOK_BACKLOG_OLDEST.set(backlog.oldest_age_seconds or 0)


def queue_series() -> dict[str, float]:
    """The resilience dashboard's queue depth sparklines (resilience.timeseries)."""
    depths = queue_depths()
    return (
        {f"queue:{priority}": size for priority, size in depths.sizes.items()}
        if depths.queued
        else {}
    )


register_sampler("notification_queues", sample_queue_sizes)
register_sampler("webhook_backlog", sample_webhook_backlog)
register_series("queues", queue_series)
