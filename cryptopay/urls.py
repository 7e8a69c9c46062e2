from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from cryptopay import dashboard_views
from payments import checkout
from resilience.health import DependencyChecks, HealthView, LiveCheck
from resilience.metrics import metrics_view

# The admin index links to the resilience dashboard (cryptopay/templates/cryptopay/admin_index.html).
admin.site.index_template = "cryptopay/admin_index.html"
# No navigation sidebar: with the filters it left lists like the payments' too narrow at 1280 px
# (the breadcrumbs and the index lead everywhere it did).
admin.site.enable_nav_sidebar = False

urlpatterns = [
    # Before the admin's own URLs, whose catch-all would answer first.
    path(
        "admin/resilience/",
        admin.site.admin_view(dashboard_views.dashboard),
        name="admin-resilience",
    ),
    path(
        "admin/resilience/breaker",
        admin.site.admin_view(dashboard_views.breaker_action),
        name="admin-resilience-breaker",
    ),
    path("admin/", admin.site.urls),
    path("pay/<slug:payment_id>/", checkout.checkout_page, name="checkout"),
    path("pay/<slug:payment_id>/status", checkout.checkout_status, name="checkout-status"),
    path("pay/<slug:payment_id>/qr.svg", checkout.checkout_qr, name="checkout-qr"),
    path("pay/<slug:payment_id>/simulate", checkout.checkout_simulate, name="checkout-simulate"),
    path("pay/<slug:payment_id>/select", checkout.checkout_select, name="checkout-select"),
    path("pay/<slug:payment_id>/logo", checkout.checkout_logo, name="checkout-logo"),
    path("api/v1/", include("payments.api.urls")),
    path("api/v1/", include("notifications.api.urls")),
    path("health", HealthView.as_view(checks=DependencyChecks()), name="health"),
    path(
        "health/live",
        HealthView.as_view(checks=[LiveCheck], with_levels=False, open_to_all=True),
        name="health-live",
    ),
    path(
        "health/ready",
        HealthView.as_view(checks=DependencyChecks("ready"), open_to_all=True),
        name="health-ready",
    ),
    path(
        "health/external",
        HealthView.as_view(checks=DependencyChecks("external")),
        name="health-external",
    ),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path(
        "api/docs/",
        SpectacularRedocView.as_view(
            url_name="api-schema", template_name="cryptopay/api_docs.html"
        ),
        name="api-docs",
    ),
    path("metrics", metrics_view, name="metrics"),
]
