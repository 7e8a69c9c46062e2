"""Health endpoints on django-health-check 4.x: one view, four check lists (view arguments).

* ``/health/live``      the process answers; touches no dependency (restart me if this fails).
* ``/health/ready``     dependencies tagged "ready": database, Redis cache, migrations applied
                        (take me out of the load balancer if this fails).
* ``/health/external``  dependencies tagged "external": rate providers, chain nodes, webhook backlog.
* ``/health``           every configured dependency.

Every registered dependency (resilience/degradation.py) becomes a ``DependencyCheck`` running the
same probe the monitoring task runs. JSON (``?format=json`` or ``Accept: application/json``):

    {"status": "healthy" | "degraded" | "unhealthy", "checked_at": ..., "duration_ms": ...,
     "checks": {"database": {"status": "ok" | "degraded" | "unavailable" | "not_configured",
                             "time_ms": 3, "message": "...", "diagnostics": {...},
                             "level": "healthy", "level_since": ...}, ...}}

Disclosure: ``/health/live`` and ``/health/ready`` answer anyone, with ``{"status": ...}`` only
(what a load balancer needs); the checks and their diagnostics (versions, connection counts, error
messages), and ``/health`` and ``/health/external`` at all, need ``Authorization: Bearer
<CRYPTOPAY_HEALTH_TOKEN>`` or a staff session (401 in the API's error shape otherwise).

An unavailable check makes the answer 503 (django-health-check itself says 500); a degraded one
(``ServiceWarning``) keeps 200 with ``"status": "degraded"``: a load balancer should keep sending
traffic to a node that still serves. ``level`` is the last level the monitoring task recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import time
from collections.abc import Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning
from health_check.views import HealthCheckView

from resilience import clock
from resilience.degradation import Dependency, Probe, probe_run, registry, state_read_all
from resilience.errors import error_response
from resilience.metrics import bearer_token_matches
from resilience.probes import uptime_seconds


@dataclasses.dataclass
class LiveCheck(HealthCheck):
    """The process is alive and serving: no dependency is asked."""

    def __post_init__(self) -> None:
        self.probe = Probe.ok(pid=os.getpid(), uptime_seconds=round(uptime_seconds()))

    async def run(self) -> None:
        return None


@dataclasses.dataclass
class DependencyCheck(HealthCheck):
    """One registered dependency's probe as a health check."""

    name: str

    def __post_init__(self) -> None:
        self.timeout = settings.HEALTH_PROBE_TIMEOUT
        self.probe: Probe | None = None
        self.dependency: Dependency | None = None

    async def run(self) -> None:
        dependency = self.dependency = registry.get(self.name)
        if dependency is None:
            raise ServiceUnavailable(f"{self.name} is no longer registered")
        if not dependency.configured:
            self.probe = Probe("ok", "not configured", {"configured": False})
            return
        if dependency.uses_database:
            # The request thread's connection (Django connections are per thread).
            run = sync_to_async(probe_run, thread_sensitive=True)
            self.probe = await run(dependency=dependency)
        else:
            self.probe = await asyncio.to_thread(probe_run, dependency=dependency)
        if self.probe.status == "unavailable":
            raise ServiceUnavailable(self.probe.message or "unavailable")
        if self.probe.status == "degraded":
            raise ServiceWarning(self.probe.message or "degraded")


class DependencyChecks:
    """The check list for one endpoint, read from the registry on every request (a view argument
    of HealthCheckView, iterated per request)."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag

    def __iter__(self) -> Iterator[tuple[type[HealthCheck], dict[str, Any]]]:
        for dependency in registry.dependencies():
            if dependency.is_group or dependency.probe is None:
                continue
            if self.tag is None or self.tag in dependency.tags:
                yield DependencyCheck, {"name": dependency.name}


def _check_name(check: HealthCheck) -> str:
    return getattr(check, "name", None) or "process"


class HealthView(HealthCheckView):
    """django-health-check's view with 503 for unavailable checks and a richer JSON body."""

    # Show each check's last monitored level (one database read; /health/live turns it off).
    with_levels = True
    # Answered to anyone (status only) rather than refused without credentials: live and ready.
    open_to_all = False

    async def get(self, request, *args, **kwargs):
        detailed = await _may_see_details(request)
        if not detailed and not self.open_to_all:
            return _refusal()
        self.started = time.perf_counter()
        self.stored: dict[str, dict[str, Any]] = {}
        if self.with_levels and detailed:
            self.stored = await sync_to_async(_stored_levels, thread_sensitive=True)()
        response = await super().get(request, *args, **kwargs)
        if response.status_code == 500:  # django-health-check: any failed or warning check
            response.status_code = 503 if self._unhealthy() else 200
        if not detailed:
            return JsonResponse({"status": self.overall_status()}, status=response.status_code)
        return response

    def _unhealthy(self) -> bool:
        return any(
            r.error is not None and not isinstance(r.error, ServiceWarning) for r in self.results
        )

    def overall_status(self) -> str:
        if self._unhealthy():
            return "unhealthy"
        return "degraded" if any(r.error is not None for r in self.results) else "healthy"

    def render_to_response_json(self, status):
        stored = self.stored
        checks: dict[str, Any] = {}
        for result in self.results:
            name = _check_name(result.check)
            probe: Probe | None = getattr(result.check, "probe", None)
            if result.error is None:
                state = "not_configured" if probe and probe.message == "not configured" else "ok"
            else:
                state = "degraded" if isinstance(result.error, ServiceWarning) else "unavailable"
            entry: dict[str, Any] = {
                "status": state,
                "time_ms": round(result.time_taken * 1000, 1),
                "message": result.error.message
                if result.error
                else (probe.message if probe else ""),
                "diagnostics": probe.diagnostics if probe else {},
            }
            if name in stored:
                entry["level"] = stored[name]["level"]
                entry["level_since"] = _iso(stored[name].get("level_since"))
            checks[name] = entry
        unhealthy = self._unhealthy()
        return JsonResponse(
            {
                "status": self.overall_status(),
                "checked_at": clock.now().isoformat(),
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 1),
                "checks": checks,
            },
            status=503 if unhealthy else 200,
        )


async def _may_see_details(request) -> bool:
    if bearer_token_matches(request, settings.HEALTH_TOKEN):
        return True
    user = await request.auser()
    return bool(user.is_active and user.is_staff)


def _refusal() -> HttpResponse:
    response = error_response(
        status_code=401,
        code="authentication_required",
        message="Health diagnostics need the health token (Bearer) or a staff session.",
    )
    response["WWW-Authenticate"] = 'Bearer realm="health"'
    return response


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _stored_levels() -> dict[str, dict[str, Any]]:
    try:
        return state_read_all()
    except Exception:  # the health answer must not depend on reading the stored levels
        return {}
