"""Runs the Celery beat schedule inside the web process, for the embedded (single-process) mode.

With Redis configured, `celery beat` does this job and this module is unused. Celery offers
`worker --beat` but no broker-less scheduler, hence this small loop over the same
CELERY_BEAT_SCHEDULE, so the embedded mode and production share one schedule.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)


def _seconds(schedule: object) -> float:
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, (int, float)):
        return float(schedule)
    raise ValueError(f"embedded scheduler supports interval schedules only, got {schedule!r}")


class EmbeddedScheduler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="embedded-beat", daemon=True)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        from cryptopay.celery import app

        app.loader.import_default_modules()  # registers the apps' tasks (autodiscovery is lazy)
        entries = [
            (name, entry["task"], _seconds(entry["schedule"]))
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        ]
        next_run = {name: time.monotonic() for name, _, _ in entries}
        while not self._stop_event.is_set():
            now = time.monotonic()
            for name, task_name, interval in entries:
                if now < next_run[name]:
                    continue
                next_run[name] = now + interval
                try:
                    app.tasks[task_name].apply(throw=True)
                except Exception:  # one failing task must not stop the schedule
                    logger.exception("scheduled task %s failed", name)
                finally:
                    close_old_connections()
            self._stop_event.wait(max(0.0, min(next_run.values()) - time.monotonic()))
