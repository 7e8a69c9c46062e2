"""Operators isolate and close breakers from the command line; every process sees it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from resilience.breaker import CircuitBreaker, IsolatedCircuitError, SharedStore, breakers
from resilience.redis_client import fast_fail_client


@pytest.fixture
def other_process_breaker():
    breakers.forget(close=True)
    store = SharedStore(fast_fail_client(settings.REDIS_URL), prefix=settings.BREAKER_KEY_PREFIX)
    now = [1_000.0]
    breaker = CircuitBreaker("rates:test", store=store, clock=lambda: now[0])
    breaker.advance = lambda seconds: now.__setitem__(0, now[0] + seconds)  # type: ignore[attr-defined]
    yield breaker
    breakers.forget(close=True)


def test_isolate_holds_the_breaker_open_in_other_processes_until_close(other_process_breaker):
    out = StringIO()

    call_command("breakers", "isolate", "rates:test", stdout=out)
    with pytest.raises(IsolatedCircuitError):
        other_process_breaker.call(lambda: None)
    call_command("breakers", "close", "rates:test", stdout=out)
    other_process_breaker.advance(other_process_breaker.options.sync_interval)

    assert other_process_breaker.call(lambda: "ok") == "ok"
    assert "rates:test               isolated" in out.getvalue()
    assert "rates:test               closed" in out.getvalue()
