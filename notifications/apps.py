from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from notifications import probes

        probes.register()
        # Queue and webhook backlog samplers for /metrics.
        from notifications import metrics  # noqa: F401
