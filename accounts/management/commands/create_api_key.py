"""Create an API key for a merchant and print it (the secret is shown this once).

manage.py create_api_key mer_… --name shop                 # a live key (cpk_…), every scope
manage.py create_api_key mer_… --name ci --test            # a test key (cpk_test_…)
manage.py create_api_key mer_… --name ro --scopes payments:read

The admin (API keys, Add) does the same for operators who prefer a browser.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts import services
from accounts.models import ApiKeyScope, Merchant


class Command(BaseCommand):
    help = "Create a live or test API key for a merchant and print it once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("merchant", help="The merchant's public id (mer_…).")
        parser.add_argument("--name", required=True, help="What the key is for.")
        parser.add_argument(
            "--test",
            action="store_true",
            help="A test key (cpk_test_…): test payments on the development chain.",
        )
        parser.add_argument(
            "--scopes",
            default=",".join(ApiKeyScope.values),
            help=f"Comma-separated, from {', '.join(ApiKeyScope.values)} (default: all).",
        )

    def handle(self, *args, **options) -> None:
        merchant = Merchant.objects.filter(public_id=options["merchant"]).first()
        if merchant is None:
            raise CommandError(f"No merchant {options['merchant']!r}.")
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        unknown = sorted(set(scopes) - set(ApiKeyScope.values))
        if unknown or not scopes:
            raise CommandError(
                f"Unknown or no scopes {unknown}; choose from {', '.join(ApiKeyScope.values)}."
            )
        api_key, secret = services.api_key_create(
            merchant=merchant, name=options["name"], scopes=scopes, livemode=not options["test"]
        )
        mode = "live" if api_key.livemode else "test"
        self.stdout.write(
            f"{mode} API key for {merchant.name} ({merchant.public_id}), "
            f"scopes {', '.join(api_key.scopes)}; shown once, store it now:\n{secret}"
        )
