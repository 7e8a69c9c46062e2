from django.apps import AppConfig


class CryptopayConfig(AppConfig):
    """The project package as an app: project-wide management commands (serve) and signal
    receivers."""

    name = "cryptopay"
    verbose_name = "cryptopay"

    def ready(self) -> None:
        # Correlation ids into Celery task headers and out of them in workers.
        from cryptopay import correlation  # noqa: F401
