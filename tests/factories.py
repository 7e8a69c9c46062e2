from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.test import Client

from accounts import services as accounts_services
from accounts.models import ApiKey, ApiKeyScope, Merchant
from payments import services
from payments.models import Payment


class MerchantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Merchant

    name = factory.Sequence(lambda n: f"Shop {n}")


class ApiKeyFactory:
    """Keys are made by the service (it alone knows the hashing); this returns key and secret."""

    @staticmethod
    def create_with_secret(
        *,
        merchant: Merchant | None = None,
        scopes: list[str] | None = None,
        name: str = "test",
        livemode: bool = True,
    ) -> tuple[ApiKey, str]:
        """``livemode`` False: a test key (``cpk_test_…``)."""
        return accounts_services.api_key_create(
            merchant=merchant or MerchantFactory.create(),
            name=name,
            scopes=scopes if scopes is not None else list(ApiKeyScope.values),
            livemode=livemode,
        )


def make_payment(
    *,
    merchant: Merchant | None = None,
    amount: str = "100.00",
    currency: str = "USD",
    crypto_currency: str = "BTC",
    **fields,
) -> Payment:
    return services.payment_create(
        merchant=merchant or MerchantFactory.create(),
        fiat_amount=Decimal(amount),
        fiat_currency=currency,
        crypto_currency=crypto_currency,
        **fields,
    )


def staff_client() -> Client:
    """A browser with a staff session: what /health and /health/external show their details to."""
    user, _ = get_user_model().objects.get_or_create(username="staff", defaults={"is_staff": True})
    client = Client()
    client.force_login(user)
    return client
