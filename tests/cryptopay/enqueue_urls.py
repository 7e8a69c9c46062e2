"""A URLconf for the correlation test: one view that enqueues a real Celery task.

No production view enqueues a task from a request yet; this one stands in for them, behind the
real middleware stack."""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.urls import path

from payments import tasks

logger = logging.getLogger("tests.enqueue")


def enqueue_expiry(request: HttpRequest) -> JsonResponse:
    result = tasks.payments_expire_due.apply_async(queue=request.GET["queue"])
    logger.info("enqueued the expiry sweep as %s", result.id)
    return JsonResponse({"task_id": result.id})


urlpatterns = [path("enqueue", enqueue_expiry)]
