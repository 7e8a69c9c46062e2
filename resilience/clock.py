"""An injectable clock, so time-dependent logic (expiry, windows, leases) is testable without
sleeping. Production code calls ``clock.now()``; tests swap in a ``FrozenClock``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone


class SystemClock:
    def now(self) -> datetime:
        # Aware, in UTC: what django.utils.timezone.now() returns with USE_TZ (the settings'),
        # without reading that setting again on every call (the webhook sender calls this per
        # attempt).
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or timezone.now()

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when


_clock: SystemClock | FrozenClock = SystemClock()


def now() -> datetime:
    return _clock.now()


def use(clock: SystemClock | FrozenClock) -> SystemClock | FrozenClock:
    """Install ``clock`` as the process clock and return the previous one."""
    global _clock
    previous, _clock = _clock, clock
    return previous
