from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    verbose_name = "Resilience"

    def ready(self) -> None:
        from resilience import probes

        probes.register()
        # Breaker and Celery task metrics, and the samplers /metrics runs before each scrape.
        from resilience import metrics  # noqa: F401
