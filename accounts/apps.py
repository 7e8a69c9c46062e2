from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Who calls the API and how it answers them: merchants, API keys and their scopes,
    authentication and its throttle, the error shape, and the request fields, pagination and
    OpenAPI pieces that the payments and notifications APIs share."""

    name = "accounts"
    verbose_name = "Accounts"
