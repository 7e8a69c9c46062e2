"""Bench-only URLconf for bench/api_throughput.py: every production route, plus the payment-create
view without its ``@idempotent()`` decorator at ``/bench/v1/payments``.

The undecorated view is the production class with ``post`` replaced by the function the decorator
wraps (``__wrapped__``): the same authentication, scopes, serializer, service call and response, no
idempotency gate. Nothing in production code can reach it: only the bench's settings module
(api_throughput_settings.py) names this URLconf.
"""

from django.urls import include, path

from payments.api.views import PaymentListCreateView

_undecorated = PaymentListCreateView.post.__wrapped__
assert _undecorated is not PaymentListCreateView.post, "the view is no longer decorated"


class PaymentCreateWithoutIdempotency(PaymentListCreateView):
    post = _undecorated


urlpatterns = [
    path("bench/v1/payments", PaymentCreateWithoutIdempotency.as_view()),
    path("", include("cryptopay.urls")),
]
