"""Who calls the API: merchants and their API keys.

The tables keep the names they had when payments owned these models (``payments_merchant``,
``payments_apikey``): moving the models here moved no data. A merchant's payment policy (expiry,
monitoring window, underpayment tolerance, speed policy, default fiat currency) stays a column of
the merchant; what the policy means is the payments app's business.
"""

from __future__ import annotations

import secrets
import string
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from cryptopay.currencies import FIAT_CHOICES

_ALPHABET = string.ascii_letters + string.digits


# The largest multiple of the alphabet's 62 letters below 256: bytes from it up are dropped, so
# every kept byte maps to a letter with the same odds. The mapping is one table for
# ``bytes.translate``, which maps and drops a whole read in C.
_UNBIASED_BYTES = 256 - 256 % len(_ALPHABET)
_BYTE_TO_LETTER = bytes(
    ord(_ALPHABET[byte % len(_ALPHABET)]) if byte < _UNBIASED_BYTES else 0 for byte in range(256)
)
_BIASED_BYTES = bytes(range(_UNBIASED_BYTES, 256))


def random_token(length: int) -> str:
    """``length`` letters of ``[A-Za-z0-9]``, uniform, from the operating system's CSPRNG in one
    read (rarely two). ``SystemRandom().choices`` read it once per letter: 82 system calls for a
    payment's ids and its event's."""
    letters = b""
    while len(letters) < length:
        # About 3 % of bytes are dropped: the margin makes a second read rare.
        read = secrets.token_bytes(length + length // 8 + 4)
        letters += read.translate(_BYTE_TO_LETTER, _BIASED_BYTES)
    return letters[:length].decode("ascii")


def new_merchant_id() -> str:
    return "mer_" + random_token(20)


class SpeedPolicy(models.IntegerChoices):
    """Confirmations required before a payment is settled (BTCPay's speed policies)."""

    HIGH = 0, "High speed (0 confirmations)"
    MEDIUM = 1, "Medium speed (1 confirmation)"
    LOW_MEDIUM = 2, "Low-medium speed (2 confirmations)"
    LOW = 6, "Low speed (6 confirmations)"


def _default_expiry():
    return settings.PAYMENT_EXPIRY_DEFAULT


def _default_monitoring_window():
    return settings.PAYMENT_MONITORING_WINDOW_DEFAULT


def _default_tolerance():
    return settings.PAYMENT_UNDERPAYMENT_TOLERANCE_DEFAULT


class Merchant(models.Model):
    public_id = models.CharField(
        max_length=32, unique=True, default=new_merchant_id, editable=False
    )
    name = models.CharField(max_length=200)
    default_fiat_currency = models.CharField(max_length=3, choices=FIAT_CHOICES, default="USD")
    payment_expiry = models.DurationField(
        default=_default_expiry, help_text="How long a buyer has to pay a new payment."
    )
    monitoring_window = models.DurationField(
        default=_default_monitoring_window,
        help_text="After expiry, how long an unconfirmed payment is watched before it is invalid.",
    )
    underpayment_tolerance_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=_default_tolerance,
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
        help_text="A payment short by at most this percentage counts as paid in full.",
    )
    speed_policy = models.PositiveSmallIntegerField(
        choices=SpeedPolicy.choices, default=SpeedPolicy.MEDIUM
    )
    # The checkout page's branding; the logo is a MerchantLogo.
    brand_color = models.CharField(
        max_length=7,
        blank=True,
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "A colour such as #1a7f5a.")],
        help_text="Accent colour of the checkout page, #rrggbb (empty: the default green).",
    )
    support_url = models.URLField(
        blank=True, help_text="Where buyers can reach you (shown when a payment needs help)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "payments_merchant"

    def __str__(self) -> str:
        return self.name


class MerchantLogo(models.Model):
    """The checkout page's logo of a merchant, kept in the database (embedded mode has no media
    server) as sniffed PNG/JPEG/WebP bytes only: never SVG, which can carry script.

    A table of its own so that no query joining a merchant (every API key lookup, checkout page,
    stream connect and watcher lock) can carry up to CRYPTOPAY_MERCHANT_LOGO_MAX_BYTES with it;
    only the logo view and the admin read it."""

    merchant = models.OneToOneField(
        Merchant, on_delete=models.CASCADE, primary_key=True, related_name="checkout_logo"
    )
    image = models.BinaryField()
    content_type = models.CharField(max_length=20)

    def __str__(self) -> str:
        return f"logo of merchant {self.merchant_id}"


class ApiKeyScope(models.TextChoices):
    PAYMENTS_READ = "payments:read", "Read payments"
    PAYMENTS_WRITE = "payments:write", "Create and cancel payments"
    WEBHOOKS_MANAGE = "webhooks:manage", "Manage webhook endpoints"


class ApiKey(models.Model):
    """A merchant's API key. Only a SHA-256 hash of the secret is stored; the prefix is shown."""

    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # False for a test key (cpk_test_…): its payments are test payments on the development chain,
    # and it sees only test objects (Stripe's test mode). Set from the key at creation.
    livemode = models.BooleanField(default=True, editable=False)

    class Meta:
        db_table = "payments_apikey"
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
