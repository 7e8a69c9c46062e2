"""Create (once) a demo merchant with a live and a test API key and an admin user, and print their
credentials.

The credentials are derived from SECRET_KEY, so reruns print the same ones and create nothing new.
Meant for local and embedded setups; in production create merchants and keys in the admin.
"""

from __future__ import annotations

import hashlib
import hmac
import string

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services
from accounts.models import ApiKey, ApiKeyScope, Merchant

DEMO_MERCHANT_NAME = "Demo Shop"
ADMIN_USERNAME = "admin"
_ALPHABET = string.ascii_letters + string.digits


def _derived(label: str, length: int) -> str:
    digest = hmac.new(settings.SECRET_KEY.encode(), label.encode(), hashlib.sha512).digest()
    return "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in digest[:length])


def demo_api_key(*, livemode: bool = True) -> str:
    label = "cryptopay-demo-api-key" if livemode else "cryptopay-demo-test-api-key"
    return services.api_key_head(livemode=livemode) + _derived(
        label, services.API_KEY_PREFIX_LENGTH + services.API_KEY_SECRET_LENGTH
    )


def demo_admin_password() -> str:
    return _derived("cryptopay-demo-admin-password", 20)


class Command(BaseCommand):
    help = "Create the demo merchant, API key and admin user if missing, and print credentials."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="Where the gateway will be served."
        )

    def handle(self, *args, **options) -> None:
        base_url = options["url"].rstrip("/")
        admin_url = base_url + "/admin/"
        raw_key = demo_api_key()
        test_key = demo_api_key(livemode=False)
        password = demo_admin_password()
        with transaction.atomic():
            merchant = Merchant.objects.filter(name=DEMO_MERCHANT_NAME).first()
            if merchant is None:
                merchant = services.merchant_create(name=DEMO_MERCHANT_NAME)
            for key, livemode, name in ((raw_key, True, "demo"), (test_key, False, "demo test")):
                if not ApiKey.objects.filter(prefix=services.api_key_split(key)).exists():
                    services.api_key_create(
                        merchant=merchant, name=name, scopes=list(ApiKeyScope.values),
                        livemode=livemode, raw_key=key,
                    )  # fmt: skip
            user_model = get_user_model()
            if not user_model.objects.filter(username=ADMIN_USERNAME).exists():
                user_model.objects.create_superuser(ADMIN_USERNAME, "", password)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "  cryptopay demo credentials (stable across reruns of this checkout):",
                    f"    merchant       {merchant.name} ({merchant.public_id})",
                    f"    API key        {raw_key}",
                    f"    test API key   {test_key}  (test mode: development chain, "
                    "POST /api/v1/payments/<id>/simulate)",
                    f"    admin          {admin_url}  user {ADMIN_USERNAME}  password {password}",
                    f"    API docs       {base_url}/api/docs/",
                    f"    try it         curl -H 'Authorization: Bearer {raw_key}' "
                    "-H 'Content-Type: application/json' "
                    """-d '{"amount": "25.00", "crypto_currency": "BTC"}' """
                    f"{base_url}/api/v1/payments",
                    "                   then open the checkout_url it returns (it has a "
                    "'Simulate payment' button).",
                    "",
                ]
            )
        )
