"""Isolates kept in the database (``BreakerIsolation``), the durable copy of what Redis shares.

Read by a breaker once, at its first use in a process; written by ``isolate()`` and ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import connection

from resilience import clock

T = TypeVar("T")


def _sync_only(query: Callable[[], T]) -> T:
    """Run ``query`` here, or in a thread of its own when called from an event loop (the ORM
    refuses to run there); that thread's connection is closed afterwards."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return query()

    def in_thread() -> T:
        try:
            return query()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="isolation") as pool:
        return pool.submit(in_thread).result()


class DatabaseIsolationLedger:
    def is_isolated(self, name: str) -> bool:
        from resilience.models import BreakerIsolation

        return _sync_only(lambda: BreakerIsolation.objects.filter(name=name).exists())

    def record(self, name: str) -> None:
        from resilience.models import BreakerIsolation

        _sync_only(
            lambda: BreakerIsolation.objects.update_or_create(
                name=name, defaults={"isolated_at": clock.now()}
            )
        )

    def remove(self, name: str) -> None:
        from resilience.models import BreakerIsolation

        _sync_only(lambda: BreakerIsolation.objects.filter(name=name).delete())
