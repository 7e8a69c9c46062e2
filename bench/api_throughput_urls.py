"""Bench-only URLconf for bench/api_throughput.py: every production route, plus the payment-create
view without its ``@idempotent()`` decorator at ``/api/bench/v1/payments`` (under ``/api/``, so
the server's body rule treats it as the real route).

The undecorated view is the production class with ``_create`` replaced by the function the
decorator wraps (``__wrapped__``): the same authentication, scopes, serializer, service call and
response, no idempotency gate. Nothing in production code can reach it: only the bench's settings module
(api_throughput_settings.py) names this URLconf.
"""

from django.urls import include, path

from payments.api.views import PaymentListCreateView

# ``post`` prices the payment, then calls the gated ``_create``: only that is undecorated.
_undecorated = PaymentListCreateView._create.__wrapped__
assert _undecorated is not PaymentListCreateView._create, "the view is no longer decorated"


class PaymentCreateWithoutIdempotency(PaymentListCreateView):
    _create = _undecorated


urlpatterns = [
    path("api/bench/v1/payments", PaymentCreateWithoutIdempotency.as_view()),
    path("", include("cryptopay.urls")),
]
