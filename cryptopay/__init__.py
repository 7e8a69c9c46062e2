"""cryptopay project package: settings, URLs, ASGI application and the Celery app."""

from resilience import multiprocess

# Every entry point (manage.py, daphne, celery) imports this package first, before any metric
# exists: join the shared directory of prometheus_client's multiprocess mode (the first process
# of a fresh start wipes what an earlier run left). A no-op without PROMETHEUS_MULTIPROC_DIR.
multiprocess.join()

from cryptopay.celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
