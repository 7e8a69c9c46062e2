from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cryptopay.api_fields import StrictCharField, StrictSerializer
from payments.checkout import checkout_url
from payments.currencies import CRYPTO_CURRENCIES, FIAT_EXPONENTS, crypto, fiat_exponent
from payments.models import Payment
from payments.money import format_base_units, format_fiat
from payments.states import PaymentStatus, PaymentSubStatus

# ASCII digits with an optional fraction: "19.99", "5", "0", "-5" (the last two refused as not
# positive); not "1e3", " 5", "5.", "+5", "1_000". [0-9] and fullmatch, not \d and $: \d also
# matches Arabic-Indic and fullwidth digits, $ a trailing newline, and Decimal() takes all three.
DECIMAL_STRING = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
# What the schema promises is accepted: the same, not all zeros ("0" is refused as not_positive).
POSITIVE_DECIMAL_STRING = r"^(?:[0-9]*[1-9][0-9]*(?:\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$"


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "pattern": POSITIVE_DECIMAL_STRING, "example": "19.99"},
            {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        ]
    }
)
class ExactDecimalField(serializers.Field):
    """A positive decimal given as a JSON string of digits (``"19.99"``) or a JSON number, read
    exactly (never through float)."""

    default_error_messages = {
        "invalid": 'Must be a decimal number such as "19.99".',
        "not_positive": "Must be greater than zero.",
    }

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, (str, int, Decimal)):
            self.fail("invalid")
        if isinstance(data, str) and not DECIMAL_STRING.fullmatch(data):
            self.fail("invalid")
        try:
            value = Decimal(data)
        except (InvalidOperation, ValueError):
            self.fail("invalid")
        if not value.is_finite():
            self.fail("invalid")
        if value <= 0:
            self.fail("not_positive")
        return value

    def to_representation(self, value: Decimal) -> str:
        return str(value)


def _unstorable(text: str) -> bool:
    """PostgreSQL's jsonb holds no NUL and no lone surrogate (JSON allows "\\ud800", UTF-8 does
    not): the values' fields refuse them, a key is checked here, not a 500 on save."""
    return "\x00" in text or (not text.isascii() and _has_lone_surrogate(text))


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class PaymentCreateSerializer(StrictSerializer):
    amount = ExactDecimalField(help_text='Price in fiat, e.g. "19.99".')
    currency = serializers.ChoiceField(
        choices=sorted(FIAT_EXPONENTS),
        required=False,
        help_text="ISO 4217 code; defaults to the merchant's default fiat currency.",
    )
    crypto_currency = serializers.ChoiceField(choices=sorted(CRYPTO_CURRENCIES))
    order_id = StrictCharField(
        required=False, allow_null=True, max_length=200, help_text="Unique per merchant."
    )
    description = StrictCharField(required=False, allow_blank=True, max_length=500)
    metadata = serializers.DictField(
        required=False,
        child=StrictCharField(
            allow_blank=True, max_length=settings.PAYMENT_METADATA_MAX_VALUE_LENGTH
        ),
        help_text=(
            f"Up to {settings.PAYMENT_METADATA_MAX_KEYS} string keys of at most "
            f"{settings.PAYMENT_METADATA_MAX_KEY_LENGTH} characters with string values of at most "
            f"{settings.PAYMENT_METADATA_MAX_VALUE_LENGTH} characters."
        ),
    )

    def validate_metadata(self, value: dict[str, str]) -> dict[str, str]:
        if len(value) > settings.PAYMENT_METADATA_MAX_KEYS:
            raise serializers.ValidationError(
                f"At most {settings.PAYMENT_METADATA_MAX_KEYS} keys.", code="metadata_too_large"
            )
        for key in value:
            if not key or len(key) > settings.PAYMENT_METADATA_MAX_KEY_LENGTH or _unstorable(key):
                raise serializers.ValidationError(
                    f"Keys must have 1 to {settings.PAYMENT_METADATA_MAX_KEY_LENGTH} characters "
                    "(no NUL, no lone surrogate).",
                    code="invalid_metadata_key",
                )
        if len(json.dumps(value).encode()) > settings.PAYMENT_METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"At most {settings.PAYMENT_METADATA_MAX_BYTES} bytes as JSON.",
                code="metadata_too_large",
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        currency = attrs.get("currency") or self.context["merchant"].default_fiat_currency
        attrs["currency"] = currency
        amount: Decimal = attrs["amount"]
        exponent = fiat_exponent(currency)
        step = Decimal(1).scaleb(-exponent)
        # Before quantize: 5e307 has more digits than the decimal context holds (InvalidOperation).
        if amount > settings.PAYMENT_MAX_FIAT_AMOUNT:
            raise serializers.ValidationError(
                {
                    "amount": [
                        serializers.ErrorDetail(
                            f"Amount exceeds the maximum of {settings.PAYMENT_MAX_FIAT_AMOUNT}.",
                            code="amount_too_large",
                        )
                    ]
                }
            )
        if amount != amount.quantize(step):
            raise serializers.ValidationError(
                {
                    "amount": [
                        serializers.ErrorDetail(
                            f"{currency} amounts have at most {exponent} decimal places.",
                            code="invalid_amount_precision",
                        )
                    ]
                }
            )
        attrs["amount"] = amount.quantize(step)
        return attrs


class ProviderPriceSerializer(serializers.Serializer):
    name = serializers.CharField()
    price = serializers.CharField()
    bid = serializers.CharField(allow_null=True)
    ask = serializers.CharField(allow_null=True)
    used = serializers.BooleanField(help_text="False when dropped as an outlier.")


class QuoteSerializer(serializers.Serializer):
    rate = serializers.CharField(help_text="Fiat per one whole coin.")
    bid = serializers.CharField(allow_null=True)
    ask = serializers.CharField(allow_null=True)
    source = serializers.ChoiceField(  # type: ignore[assignment]  # DRF moves declared fields off the class
        choices=["live", "cache", "emergency", "fallback"],
        help_text="The level the quote came from.",
    )
    providers = ProviderPriceSerializer(many=True, help_text="Raw prices of the providers asked.")
    fetched_at = serializers.DateTimeField(help_text="When the providers answered.")
    age_seconds = serializers.IntegerField(help_text="Age of the rate when it was quoted.")


class RateSerializer(QuoteSerializer):
    object = serializers.CharField(default="rate")
    pair = serializers.CharField(help_text='e.g. "BTC-USD".')


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


class PaymentSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    amount = serializers.SerializerMethodField()
    currency = serializers.CharField(source="fiat_currency")
    crypto_amount = serializers.SerializerMethodField(
        help_text="Amount due in the crypto currency, exact decimal string."
    )
    crypto_amount_base_units = serializers.SerializerMethodField(
        help_text="Amount due as an integer string of base units (satoshi, wei...)."
    )
    amount_received = serializers.SerializerMethodField()
    amount_confirmed = serializers.SerializerMethodField()
    amount_due = serializers.SerializerMethodField(help_text="What the buyer still has to pay.")
    status = serializers.ChoiceField(choices=PaymentStatus.choices)
    sub_status = serializers.SerializerMethodField()
    quote = serializers.SerializerMethodField()
    checkout_url = serializers.SerializerMethodField(
        help_text="The hosted checkout page to send the buyer to (carries the buyer's token)."
    )

    class Meta:
        model = Payment
        fields = [
            "id",
            "object",
            "order_id",
            "description",
            "metadata",
            "amount",
            "currency",
            "crypto_currency",
            "crypto_amount",
            "crypto_amount_base_units",
            "amount_received",
            "amount_confirmed",
            "amount_due",
            "quote",
            "deposit_address",
            "checkout_url",
            "status",
            "sub_status",
            "required_confirmations",
            "expires_at",
            "monitoring_until",
            "created_at",
            "updated_at",
            "settled_at",
        ]

    def get_object(self, payment: Payment) -> str:
        return "payment"

    def get_checkout_url(self, payment: Payment) -> str:
        path = checkout_url(payment)
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    def _crypto(self, payment: Payment, amount: int) -> str:
        return format_base_units(amount=amount, currency=crypto(payment.crypto_currency))

    def get_amount(self, payment: Payment) -> str:
        return format_fiat(
            amount=payment.fiat_amount, exponent=fiat_exponent(payment.fiat_currency)
        )

    def get_crypto_amount(self, payment: Payment) -> str:
        return self._crypto(payment, payment.crypto_amount)

    def get_crypto_amount_base_units(self, payment: Payment) -> str:
        return str(payment.crypto_amount)

    def get_amount_received(self, payment: Payment) -> str:
        return self._crypto(payment, payment.amount_received)

    def get_amount_confirmed(self, payment: Payment) -> str:
        return self._crypto(payment, payment.amount_confirmed)

    def get_amount_due(self, payment: Payment) -> str:
        return self._crypto(payment, max(payment.crypto_amount - payment.amount_received, 0))

    @extend_schema_field(
        {"type": "string", "nullable": True, "enum": [*PaymentSubStatus.values[1:], None]}
    )
    def get_sub_status(self, payment: Payment) -> str | None:
        return payment.sub_status or None

    @extend_schema_field(QuoteSerializer)
    def get_quote(self, payment: Payment) -> dict[str, Any]:
        return {
            "rate": _plain(payment.rate),
            "bid": _plain(payment.rate_bid),
            "ask": _plain(payment.rate_ask),
            "source": payment.rate_source,
            "providers": payment.rate_providers,
            "fetched_at": serializers.DateTimeField().to_representation(payment.rate_fetched_at),
            "age_seconds": payment.rate_age_seconds,
        }


for _name in ("get_object", "get_amount", "get_crypto_amount", "get_crypto_amount_base_units",
              "get_amount_received", "get_amount_confirmed", "get_amount_due"):  # fmt: skip
    extend_schema_field(OpenApiTypes.STR)(getattr(PaymentSerializer, _name))


class PaymentListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = PaymentSerializer(many=True)  # type: ignore[assignment]  # DRF moves declared fields off the class
    has_more = serializers.BooleanField()


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.ChoiceField(
        choices=[
            "invalid_request_error",
            "authentication_error",
            "permission_error",
            "api_error",
            "rate_limit_error",
        ]
    )
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    errors = serializers.ListField(  # type: ignore[assignment]  # DRF moves declared fields off the class
        child=serializers.DictField(), required=False, help_text="Every validation error (400)."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
