"""Shared by the degradation tests of resilience and payments."""

from __future__ import annotations

from prometheus_client import REGISTRY


def recovery_count(service: str, outcome: str) -> float:
    """The current value of cryptopay_recovery_attempts_total{service, outcome}."""
    value = REGISTRY.get_sample_value(
        "cryptopay_recovery_attempts_total", {"service": service, "outcome": outcome}
    )
    return value or 0.0
