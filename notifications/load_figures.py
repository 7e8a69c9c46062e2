"""The notifications' load: WebSocket connections, notification queue depths and the webhook
backlog. Read by the admin resilience dashboard (``cryptopay.dashboard_views``) and by the
``/metrics`` samplers (``notifications.metrics``), which set gauges from them at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Min

from notifications import queues
from notifications.models import WebhookDelivery
from notifications.presence import connection_registry
from resilience import clock


@dataclass(frozen=True)
class ConnectionFigures:
    total: int
    users: int
    top_users: list[tuple[str, int]]  # most connections first
    evictions_total: int
    top_evicted: list[tuple[str, int]]
    fleet_wide: bool  # False: Redis could not be read, figures are this process's only


def connection_figures(*, top: int = 10) -> ConnectionFigures:
    stats = connection_registry().stats()

    def _top(counts: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]

    return ConnectionFigures(
        total=stats.total,
        users=len(stats.per_user),
        top_users=_top(stats.per_user),
        evictions_total=stats.evictions_total,
        top_evicted=_top(stats.evictions_per_user),
        fleet_wide=stats.source == "redis",
    )


@dataclass(frozen=True)
class QueueDepths:
    sizes: dict[str, int]  # priority -> waiting event ids, High first
    queued: bool  # False in embedded mode: events are dispatched in-process, nothing waits


def queue_depths() -> QueueDepths:
    """Raises redis.RedisError when Redis does not answer."""
    return QueueDepths(sizes=queues.sizes(), queued=bool(settings.REDIS_URL))


@dataclass(frozen=True)
class WebhookBacklog:
    pending: int
    oldest_at: datetime | None
    oldest_age_seconds: float | None


def webhook_backlog() -> WebhookBacklog:
    # Live endpoints only: a developer's test receiver that is down must not page an operator.
    backlog = WebhookDelivery.objects.filter(
        status=WebhookDelivery.Status.PENDING, endpoint__livemode=True
    ).aggregate(count=Count("pk"), oldest=Min("created_at"))
    oldest = backlog["oldest"]
    return WebhookBacklog(
        pending=backlog["count"],
        oldest_at=oldest,
        oldest_age_seconds=None
        if oldest is None
        else max(0.0, (clock.now() - oldest).total_seconds()),
    )
