"""WebSocket routes served by daphne through cryptopay.asgi."""

from django.urls import path

from payments.consumers import MerchantStreamConsumer, PaymentStreamConsumer

websocket_urlpatterns = [
    path("ws/payments/<slug:payment_id>/", PaymentStreamConsumer.as_asgi()),
    path("ws/merchant/", MerchantStreamConsumer.as_asgi()),
]
