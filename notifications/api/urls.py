from django.urls import path

from notifications.api import views

urlpatterns = [
    path(
        "webhook-endpoints",
        views.WebhookEndpointListCreateView.as_view(),
        name="webhook-endpoints",
    ),
    path(
        "webhook-endpoints/<slug:public_id>",
        views.WebhookEndpointDetailView.as_view(),
        name="webhook-endpoint-detail",
    ),
    path(
        "webhook-endpoints/<slug:public_id>/rotate-secret",
        views.WebhookEndpointRotateSecretView.as_view(),
        name="webhook-endpoint-rotate-secret",
    ),
    path(
        "webhook-endpoints/<slug:public_id>/deliveries",
        views.WebhookDeliveryListView.as_view(),
        name="webhook-endpoint-deliveries",
    ),
    path("events", views.EventListView.as_view(), name="events"),
    path("events/<slug:public_id>", views.EventDetailView.as_view(), name="event-detail"),
    path(
        "events/<slug:public_id>/redeliver",
        views.EventRedeliverView.as_view(),
        name="event-redeliver",
    ),
]
