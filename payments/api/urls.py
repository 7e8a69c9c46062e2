from django.urls import path

from payments.api import views

urlpatterns = [
    path("rates", views.RateView.as_view(), name="rates"),
    path("payments", views.PaymentListCreateView.as_view(), name="payments"),
    path("payments/<slug:public_id>", views.PaymentDetailView.as_view(), name="payment-detail"),
    path(
        "payments/<slug:public_id>/cancel",
        views.PaymentCancelView.as_view(),
        name="payment-cancel",
    ),
    path(
        "payments/<slug:public_id>/simulate",
        views.PaymentSimulateView.as_view(),
        name="payment-simulate",
    ),
]
