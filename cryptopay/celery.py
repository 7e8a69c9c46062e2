"""The Celery app. Configuration (broker, beat schedule) lives in settings under CELERY_*."""

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")

app = Celery("cryptopay")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _logging_from_settings(**kwargs) -> None:
    """Workers and beat log like the web processes (settings.LOGGING: JSON lines, correlation
    ids, redaction) instead of Celery's own format."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
