"""``manage.py rotate_encryption_key``: re-encrypt every stored webhook secret under the first key
of CRYPTOPAY_ENCRYPTION_KEYS (or SECRET_KEY), so older keys can then be removed.

Rotating a key:

1. ``manage.py rotate_encryption_key --generate-key`` prints a new key;
2. put it first in CRYPTOPAY_ENCRYPTION_KEYS, keep the old ones after it, restart every process;
3. ``manage.py rotate_encryption_key`` re-encrypts (safe to run again; rows are locked one at a
   time, so it runs beside live traffic);
4. remove the old keys and restart.

Secrets no configured key decrypts are listed (endpoint ids only) and the command exits 1 after
re-encrypting the others.
"""

from __future__ import annotations

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from notifications import endpoint_secrets
from notifications.models import WebhookEndpoint
from resilience import clock


def _in_use(endpoint: WebhookEndpoint) -> list[str]:
    """The encrypted fields still used to sign: a previous secret past its overlap never is."""
    fields = ["secret_encrypted"]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_encrypted and expires and expires > clock.now():
        fields.append("previous_secret_encrypted")
    return fields


class Command(BaseCommand):
    help = "Re-encrypt the stored webhook secrets under the first configured encryption key."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--generate-key",
            action="store_true",
            help="Print a new random key for CRYPTOPAY_ENCRYPTION_KEYS and change nothing.",
        )

    def handle(self, *args, **options) -> None:
        if options["generate_key"]:
            self.stdout.write(Fernet.generate_key().decode())
            return
        rotated, unreadable = 0, []
        for pk in WebhookEndpoint.objects.order_by("pk").values_list("pk", flat=True):
            with transaction.atomic():
                endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=pk).first()
                if endpoint is None:
                    continue  # deleted meanwhile
                changed = []
                for field in _in_use(endpoint):
                    token = getattr(endpoint, field)
                    try:
                        setattr(endpoint, field, endpoint_secrets.reencrypt(token))
                    except endpoint_secrets.SecretUndecryptable:
                        unreadable.append(f"{endpoint.public_id} ({field})")
                        continue
                    changed.append(field)
                if changed:
                    endpoint.save(update_fields=changed)
                    rotated += len(changed)
        self.stdout.write(f"re-encrypted {rotated} secret(s) under the first key")
        if unreadable:
            raise CommandError(
                f"{len(unreadable)} secret(s) no configured key decrypts, left as they were: "
                + ", ".join(unreadable)
                + ". Add the key they were encrypted under and run again, or rotate them."
            )
