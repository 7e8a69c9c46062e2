"""Prometheus metrics: the ``/metrics`` view, the conventions every metric follows, and the
metrics of the mechanisms in ``resilience`` (breakers, Celery tasks).

Exposition is django-prometheus's (``ExportToDjangoView``, plus its request middleware); with
``PROMETHEUS_MULTIPROC_DIR`` set it aggregates every process's files (``resilience.multiprocess``
says who wipes the directory and when).

Conventions (follow them when adding a metric, e.g. WebSocket connections and evictions):

* Name ``cryptopay_<area>_<what>[_<unit>]``; a Counter is declared without ``_total``
  (prometheus_client appends it). Help text says what one unit is.
* Declare it once, at module level, in the module that changes it (``notifications.dispatcher``,
  ``resilience.idempotency``...), on the default registry; never a custom collector (multiprocess
  mode cannot read them).
* Labels take bounded values only: configured names (breaker, chain, pair, provider, service),
  priorities, outcomes, states. Never ids of payments, users or requests.
* Known label values are initialised to 0 at import (``prime``), so a dashboard shows 0 rather
  than nothing before the first event.
* Every Gauge names its ``multiprocess_mode``; the default ``all`` would add a ``pid`` label:
  - ``livesum`` for things a process holds and loses when it dies (open WebSocket connections of
    this process: ``inc()`` on connect, ``dec()`` on disconnect);
  - ``mostrecent`` for a state or a sampled value that any process may set (breaker state, queue
    sizes, backlog, rate age, lag): the last write wins;
  - ``livemax`` for "the worst among the running processes".
* Values that live in Redis or the database (queue sizes, backlogs, ages, lag) are not kept up to
  date by whoever changes them: register a sampler (``register_sampler``) that sets the gauge;
  ``/metrics`` runs every sampler just before it collects. A sampler must be quick (one query or
  one pipeline) and may fail: its error is logged and counted, the scrape still answers.

For example (the WebSocket connection figures, ``notifications.presence``)::

    CONNECTIONS = Gauge("cryptopay_websocket_connections", "Open WebSocket connections",
                        multiprocess_mode="livesum")
    EVICTIONS = Counter("cryptopay_websocket_evictions", "Connections closed to admit a newer "
                        "one of the same user", ["reason"])

Access: with ``CRYPTOPAY_METRICS_TOKEN`` set, ``/metrics`` wants ``Authorization: Bearer <token>``
(401 otherwise); without it, only loopback clients that came through no proxy (no
``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP``) are served (403 otherwise).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable

from celery.signals import task_postrun, worker_process_shutdown
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase

from resilience import multiprocess
from resilience.breaker import CircuitState, breakers, circuit_state_changed
from resilience.idempotency import OUTCOMES as IDEMPOTENCY_OUTCOMES

logger = logging.getLogger(__name__)

# Breaker states as numbers, so one series per breaker carries its state.
STATE_CODES = {
    CircuitState.CLOSED: 0,
    CircuitState.HALF_OPEN: 1,
    CircuitState.OPEN: 2,
    CircuitState.ISOLATED: 3,
}
BREAKER_STATE = Gauge(
    "cryptopay_circuit_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open, 3 isolated.",
    ["breaker"],
    multiprocess_mode="mostrecent",
)
BREAKER_TRANSITIONS = Counter(
    "cryptopay_circuit_breaker_transitions",
    "State changes of a breaker, counted in the process that caused them.",
    ["breaker", "from_state", "to_state"],
)
TASKS = Counter("cryptopay_celery_tasks", "Celery task runs by final state.", ["task", "state"])
SAMPLER_ERRORS = Counter(
    "cryptopay_metrics_sampler_errors", "Samplers that failed during a scrape.", ["sampler"]
)

_samplers: dict[str, Callable[[], None]] = {}
_samplers_lock = threading.Lock()


def prime(metric: MetricWrapperBase, *label_sets: Iterable[str]) -> None:
    """Create the children of ``metric`` for known label values, so they export 0."""
    for labels in label_sets:
        metric.labels(*labels)


prime(
    IDEMPOTENCY_OUTCOMES,
    *[(outcome,) for outcome in ("executed", "replayed", "conflict", "mismatch", "released")],
)


def register_sampler(name: str, sampler: Callable[[], None]) -> None:
    """Run ``sampler`` before each scrape (replaces an earlier one of the same name)."""
    with _samplers_lock:
        _samplers[name] = sampler


def sample_all() -> None:
    with _samplers_lock:
        samplers = list(_samplers.items())
    for name, sampler in samplers:
        try:
            sampler()
        except Exception as exc:  # a broken dependency must not take the metrics down
            SAMPLER_ERRORS.labels(name).inc()
            logger.warning("metrics sampler %s failed: %s: %s", name, exc.__class__.__name__, exc)


def _sample_breakers() -> None:
    for breaker in breakers.all():
        BREAKER_STATE.labels(breaker.name).set(STATE_CODES[breaker.state])


register_sampler("breakers", _sample_breakers)

# Dependency levels as numbers (the monitor's, resilience.degradation): one series per dependency.
LEVEL_CODES = {"healthy": 0, "degraded": 1, "critical": 2, "unknown": 3}
DEPENDENCY_LEVEL = Gauge(
    "cryptopay_dependency_level",
    "Last monitored level of a dependency: 0 healthy, 1 degraded, 2 critical, 3 unknown "
    "(not probed for three monitoring intervals).",
    ["dependency"],
    multiprocess_mode="mostrecent",
)


def _sample_dependency_levels() -> None:
    from resilience.selectors import dependency_levels

    for name, level in dependency_levels().items():
        DEPENDENCY_LEVEL.labels(name).set(LEVEL_CODES[str(level)])


register_sampler("dependency_levels", _sample_dependency_levels)


def _on_circuit_state_changed(sender: str, from_state, to_state, **kwargs) -> None:
    BREAKER_STATE.labels(sender).set(STATE_CODES[CircuitState(to_state)])
    if not kwargs.get("adopted", False):
        BREAKER_TRANSITIONS.labels(sender, str(from_state), str(to_state)).inc()


circuit_state_changed.connect(_on_circuit_state_changed, dispatch_uid="resilience.metrics")


@task_postrun.connect(dispatch_uid="resilience.metrics.task_postrun")
def _on_task_postrun(sender=None, state=None, **kwargs) -> None:
    name = getattr(sender, "name", None) or "unknown"
    TASKS.labels(name, str(state or "UNKNOWN")).inc()


@worker_process_shutdown.connect(dispatch_uid="resilience.metrics.worker_process_shutdown")
def _on_pool_child_exit(pid=None, **kwargs) -> None:
    if pid is not None:
        multiprocess.child_exited(int(pid))


# --- the view -----------------------------------------------------------------------------------

FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def bearer_token_matches(request: HttpRequest, token: str) -> bool:
    """``Authorization: Bearer <token>`` with this (non-empty) token, compared in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.encode())
    )


def scrape_refusal(request: HttpRequest) -> HttpResponse | None:
    """Why this request may not read the metrics (a response), or None when it may."""
    token = settings.METRICS_TOKEN
    if token:
        if bearer_token_matches(request, token):
            return None
        response = HttpResponse(
            "metrics need a bearer token\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if _loopback(request.META.get("REMOTE_ADDR", "")) and not any(
        header in request.META for header in FORWARDING_HEADERS
    ):
        return None
    return HttpResponse(
        "metrics are served to loopback clients only; set CRYPTOPAY_METRICS_TOKEN\n",
        status=403,
        content_type="text/plain",
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = scrape_refusal(request)
    if refusal is not None:
        return refusal
    sample_all()
    return ExportToDjangoView(request)
