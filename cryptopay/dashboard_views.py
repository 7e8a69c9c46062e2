"""The admin resilience dashboard (staff only): what every dependency is doing, in one page.

It combines the apps' dashboard selectors (``resilience.dashboard``, ``notifications.load_figures``,
``payments.freshness``, plus ``resilience.selectors``), so it lives at project level: ``resilience``
knows nothing of payments. Each part is read on its own; a part that cannot be read (Redis or the
database down) is shown as unavailable with the reason, and the page still answers 200.

Isolate and close act on the breaker's shared state in Redis, so every process (web, Celery,
dispatcher) follows within the breaker's sync interval; without Redis only this process does, and
the message says so. Both views are wrapped with ``admin.site.admin_view`` in ``cryptopay.urls``
(staff only, the admin's login redirect, CSRF-protected); staff status alone is not enough: reading
needs VIEW_PERMISSION, isolate and close need BREAKER_PERMISSION (403 otherwise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.decorators import permission_required
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_POST

from notifications.load_figures import connection_figures, queue_depths, webhook_backlog
from payments.freshness import rate_age_list, watcher_lag_list
from resilience.dashboard import (
    UnknownBreaker,
    breaker_close,
    breaker_isolate,
    breaker_list,
    idempotency_figures,
    redis_status,
)
from resilience.selectors import dependency_list, operation_chain_list
from resilience.timeseries import read as timeseries_read

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 10
HISTORY_SECONDS = 3600  # the sparklines' span
# The dashboard shows the dependencies' levels and more; whoever may view those may view it.
VIEW_PERMISSION = "resilience.view_dependencystate"
BREAKER_PERMISSION = "resilience.change_breaker"


@dataclass(frozen=True)
class Part:
    value: Any = None
    error: str = ""  # why it could not be read ("" when it was)


def _read(read: Callable[[], Any], *, redis_down: str = "") -> Part:
    if redis_down:  # Redis-only figures: do not wait for a timeout to learn what we know
        return Part(error=f"Redis unavailable ({redis_down})")
    try:
        return Part(read())
    except Exception as exc:
        logger.warning("dashboard: %s unreadable: %s: %s", read.__name__, type(exc).__name__, exc)
        close_old_connections()
        return Part(error=f"{type(exc).__name__}: {exc}"[:300])


@permission_required(VIEW_PERMISSION, raise_exception=True)
def dashboard(request: HttpRequest) -> HttpResponse:
    redis = redis_status()
    redis_down = redis.error if redis.configured and not redis.reachable else ""
    context = {
        **admin.site.each_context(request),
        "title": "Resilience dashboard",
        "refresh_seconds": REFRESH_SECONDS,
        "redis": redis,
        "breakers": _read(breaker_list),
        "dependencies": _read(dependency_list),
        "chains": _read(operation_chain_list),
        "idempotency": _read(idempotency_figures),
        "connections": _read(connection_figures),
        "queues": _read(queue_depths, redis_down=redis_down),
        "backlog": _read(webhook_backlog),
        "rates": _read(rate_age_list),
        "watchers": _read(watcher_lag_list),
        "can_change_breakers": request.user.has_perm(BREAKER_PERMISSION),
    }
    context["history"] = _history(context, redis_down=redis_down)
    return TemplateResponse(request, "cryptopay/dashboard.html", context)


def _history(context: dict[str, Any], *, redis_down: str) -> dict[str, Any] | None:
    """The sparklines' series for the breakers and queues on the page (None: unreadable)."""
    names = [f"queue:{priority}" for priority in getattr(context["queues"].value, "sizes", {})]
    names += [f"breaker:{b.name}" for b in getattr(context["breakers"].value, "breakers", [])]
    until = time.time()
    part = _read(
        lambda: timeseries_read(names, since=until - HISTORY_SECONDS), redis_down=redis_down
    )
    if part.error:
        return None
    return {"series": part.value, "since": until - HISTORY_SECONDS, "until": until}


ACTIONS = {"isolate": breaker_isolate, "close": breaker_close}


@require_POST
@permission_required(BREAKER_PERMISSION, raise_exception=True)
def breaker_action(request: HttpRequest) -> HttpResponse:
    name, action = request.POST.get("name", ""), request.POST.get("action", "")
    if action not in ACTIONS:
        return HttpResponseBadRequest("action must be isolate or close")
    try:
        shared = ACTIONS[action](name=name)
    except UnknownBreaker:
        raise Http404(f"No breaker named {name!r}.") from None
    done = "isolated" if action == "isolate" else "closed"
    logger.warning(
        "breaker %s %s by %s from the dashboard", name, done, request.user.get_username()
    )
    if shared:
        messages.success(request, f"Breaker {name} {done} in every process.")
    else:
        messages.warning(
            request, f"Breaker {name} {done} in this process only: its shared state is unavailable."
        )
    return redirect("admin-resilience")
