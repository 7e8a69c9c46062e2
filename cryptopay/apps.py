from django.apps import AppConfig


class CryptopayConfig(AppConfig):
    """The project package is an app only to hold project-wide management commands (serve)."""

    name = "cryptopay"
    verbose_name = "cryptopay"
