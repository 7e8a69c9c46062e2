from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountsConfig(AppConfig):
    """Who calls the API and how it answers them: merchants, API keys and their scopes,
    authentication and its throttle, the error shape, and the request fields, pagination and
    OpenAPI pieces that the payments and notifications APIs share."""

    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts.models import ApiKey, Merchant

        # Signals rather than calls in each service: the admin, the merchant's settings API and
        # the services all save these rows, and one missed path would keep a change from the
        # processes that remember keys (queryset updates call api_keys_changed themselves).
        for model in (ApiKey, Merchant):
            for signal in (post_save, post_delete):
                signal.connect(
                    _changed, sender=model, dispatch_uid=f"api-key-cache-{model.__name__}"
                )


def _changed(**kwargs: object) -> None:
    from accounts import api_key_cache

    api_key_cache.api_keys_changed()
