from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from payments import dependencies

        dependencies.register()
        # Rate age and watcher lag samplers for /metrics.
        from payments import metrics  # noqa: F401
