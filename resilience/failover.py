"""Call the first healthy endpoint of an ordered list, each guarded by its own circuit breaker.

Endpoints are tried in order on every call, so traffic returns to the primary as soon as its
breaker lets it through again; an endpoint whose breaker is open costs nothing but a check.
Only errors that ``is_failure`` accepts move on to the next endpoint (and count in its breaker);
anything else is the caller's answer and is raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from resilience.breaker import (
    BrokenCircuitError,
    CircuitBreaker,
    breaker_options_from_settings,
    get_breaker,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AllEndpointsFailed(Exception):
    def __init__(self, name: str, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__(f"{name}: every endpoint failed: {errors}")


def redact(url: str) -> str:
    """host:port of an endpoint, without credentials, for logs and breaker names."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


class FailoverPool:
    def __init__(
        self,
        name: str,
        endpoints: list[str] | tuple[str, ...],
        *,
        is_failure: Callable[[BaseException], bool],
    ) -> None:
        if not endpoints:
            raise ValueError(f"{name}: no endpoints")
        self.name = name
        self.endpoints = list(endpoints)
        self._is_failure = is_failure
        self.last_used: str | None = None

    def breaker(self, index: int) -> CircuitBreaker:
        return get_breaker(
            f"{self.name}:{index}:{redact(self.endpoints[index])}",
            breaker_options_from_settings(is_failure=self._is_failure),
        )

    def call(self, fn: Callable[[str], T]) -> T:
        errors: dict[str, str] = {}
        for index, endpoint in enumerate(self.endpoints):
            try:
                result = self.breaker(index).call(fn, endpoint)
            except BrokenCircuitError as exc:
                errors[redact(endpoint)] = f"circuit open, retry after {exc.retry_after:.0f} s"
                continue
            except Exception as exc:
                if not self._is_failure(exc):
                    raise
                errors[redact(endpoint)] = f"{exc.__class__.__name__}: {exc}"
                logger.warning(
                    "%s: %s failed (%s); trying the next", self.name, redact(endpoint), exc
                )
                continue
            if self.last_used != endpoint and self.last_used is not None:
                logger.warning("%s: now using %s", self.name, redact(endpoint))
            self.last_used = endpoint
            return result
        raise AllEndpointsFailed(self.name, errors)
