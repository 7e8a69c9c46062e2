"""cryptopay project package: settings, URLs, ASGI application and the Celery app."""

from cryptopay.celery import app as celery_app

__all__ = ("celery_app",)
