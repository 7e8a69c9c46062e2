"""Short time series for the resilience dashboard's sparklines: the last hour of a few numbers.

Prometheus keeps the long history (deploy/grafana); these are for an operator who opens the admin
and wants to know "has this breaker been flapping, has this queue been growing" without another
tool. Celery beat samples every registered series every TIMESERIES_SAMPLE_SECONDS
(``resilience.tasks.timeseries_sample``); each series is a Redis list of ``"<unix time> <value>"``
entries, newest first, trimmed to TIMESERIES_POINTS on every write, so its size is bounded.
Without Redis (embedded mode: one process, beat in it) the series live in this process's memory.

Series sources register themselves (``register_series``) as samplers do for ``/metrics``, so
``resilience`` knows nothing of the apps that feed it: ``breaker:<name>`` is the breaker's state
code (0 closed ... 3 isolated, ``resilience.metrics.STATE_CODES``), registered here;
``queue:<priority>`` comes from ``notifications``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings

from resilience.redis_client import fast_fail_client

logger = logging.getLogger(__name__)

Source = Callable[[], Mapping[str, float]]

_sources: dict[str, Source] = {}
_memory: dict[str, deque[tuple[float, float]]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float]]  # (unix time, value), oldest first


def register_series(name: str, source: Source) -> None:
    """``source()`` returns {series name: value} and is called at each sample."""
    with _lock:
        _sources[name] = source


@lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    return fast_fail_client(url, timeout=1)


def _client() -> redis.Redis | None:
    return _client_for(settings.REDIS_URL) if settings.REDIS_URL else None


def _key(series: str) -> str:
    return f"{settings.TIMESERIES_REDIS_PREFIX}:{series}"


def record(values: Mapping[str, float], *, at: float | None = None) -> None:
    """Append one point to each series, dropping points beyond TIMESERIES_POINTS."""
    now = time.time() if at is None else at
    keep = settings.TIMESERIES_POINTS
    client = _client()
    if client is None:
        with _lock:
            for series, value in values.items():
                _memory.setdefault(series, deque(maxlen=keep)).appendleft((now, float(value)))
        return
    pipe = client.pipeline(transaction=False)
    for series, value in values.items():
        pipe.lpush(_key(series), f"{now:.3f} {float(value)!r}")
        pipe.ltrim(_key(series), 0, keep - 1)
        # A series nobody writes any more (a breaker that is gone) disappears by itself.
        pipe.expire(
            _key(series), int(keep * settings.TIMESERIES_SAMPLE_SECONDS.total_seconds() * 2) + 60
        )
    pipe.execute()


def sample() -> int:
    """Record every registered source's values now; a failing source is logged and skipped.
    Returns how many points were written."""
    with _lock:
        sources = list(_sources.items())
    values: dict[str, float] = {}
    for name, source in sources:
        try:
            values.update(source())
        except Exception as exc:
            logger.warning("time series %s not sampled: %s: %s", name, type(exc).__name__, exc)
    if values:
        record(values)
    return len(values)


def read(names: list[str], *, since: float) -> dict[str, Series]:
    """The points of each named series not older than ``since`` (unix time), oldest first.
    Raises redis.RedisError when Redis does not answer."""
    client = _client()
    if client is None:
        with _lock:
            raw = {name: list(_memory.get(name, ())) for name in names}
    else:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.lrange(_key(name), 0, -1)
        raw = {
            name: [(float(at), float(value)) for at, value in (e.split() for e in entries)]
            for name, entries in zip(names, pipe.execute(), strict=True)
        }
    return {
        name: Series(name=name, points=sorted((t, v) for t, v in points if t >= since))
        for name, points in raw.items()
    }


def _breaker_states() -> dict[str, float]:
    from resilience.breaker import CircuitState
    from resilience.dashboard import breaker_list
    from resilience.metrics import STATE_CODES

    return {
        f"breaker:{b.name}": STATE_CODES[CircuitState(b.state)] for b in breaker_list().breakers
    }


register_series("breakers", _breaker_states)
