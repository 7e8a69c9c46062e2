"""Bench-only URLconf for bench/api_throughput.py, bench/api_capacity.py and
bench/idempotency_overhead.py: every production
route, plus the payment-create view without its ``@idempotent()`` decorator at
``/api/bench/v1/payments`` (under ``/api/``, so the server's body rule treats it as the real route)
and a minimal one-row insert at ``/api/bench/v1/minimal``.

The undecorated view is the production class with ``_create`` replaced by the function the
decorator wraps (``__wrapped__``): the same authentication, scopes, serializer, service call and
response, no idempotency gate. Nothing in production code can reach it: only the bench's settings module
(api_throughput_settings.py) names this URLconf.
"""

from django.urls import include, path
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import request_client
from notifications.models import Event
from payments.api.views import WRITE, PaymentListCreateView
from resilience import clock

# ``post`` prices the payment, then calls the gated ``_create``: only that is undecorated.
_undecorated = PaymentListCreateView._create.__wrapped__
assert _undecorated is not PaymentListCreateView._create, "the view is no longer decorated"


class PaymentCreateWithoutIdempotency(PaymentListCreateView):
    _create = _undecorated


class MinimalInsert(APIView):
    """The floor of a write over this stack (bench/api_capacity.py's baseline): the same
    middleware, DRF, Bearer authentication and scope check, then ONE row inserted (an outbox
    event holding the body) and a small 201; no validation, pricing, address or idempotency."""

    required_scopes = {"POST": WRITE}

    def post(self, request: Request) -> Response:
        event = Event.objects.create(
            owner=request_client(request).merchant.public_id,
            type="bench.minimal",
            data=request.data,
            created_at=clock.now(),
        )
        return Response({"id": event.public_id}, status=status.HTTP_201_CREATED)


urlpatterns = [
    path("api/bench/v1/minimal", MinimalInsert.as_view()),
    path("api/bench/v1/payments", PaymentCreateWithoutIdempotency.as_view()),
    path("", include("cryptopay.urls")),
]
