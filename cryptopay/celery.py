"""The Celery app. Configuration (broker, beat schedule) lives in settings under CELERY_*."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")

app = Celery("cryptopay")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
