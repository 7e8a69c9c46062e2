from __future__ import annotations

import copy
import json
import re
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.api_fields import StrictCharField, StrictSerializer
from cryptopay.currencies import FIAT_EXPONENTS, fiat_exponent
from payments.checkout import ReturnUrlRefused, checkout_url, return_url_check
from payments.currencies import CRYPTO_CURRENCIES, crypto
from payments.models import Payment, PaymentOption
from payments.money import coins_to_base_units, format_base_units, format_fiat
from payments.selectors import merchant_accepted_currencies
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
    crypto_currency = serializers.ChoiceField(
        choices=sorted(CRYPTO_CURRENCIES),
        required=False,
        help_text="The one coin to be paid in (no choice for the buyer). Give this or "
        "accepted_currencies.",
    )
    accepted_currencies = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(CRYPTO_CURRENCIES)),
        required=False,
        min_length=1,
        max_length=len(CRYPTO_CURRENCIES),
        help_text="The coins the buyer picks from on the checkout page. Default (neither this nor "
        "crypto_currency given): every coin the merchant has a wallet for.",
    )
    redirect_url = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Public http(s) URL the checkout page sends the buyer back to once paid.",
    )
    cancel_url = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Public http(s) URL for a buyer who gives up, or whose payment expired.",
    )
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

    def get_fields(self) -> dict[str, serializers.Field]:
        # Shallow copies of the declared fields, not DRF's deep copies: those build each field
        # anew from its arguments (the choices lists copied too), most of what validating a
        # create cost. A copy is safe to share the rest with because a field keeps nothing of a
        # request: binding sets its name and parent on the copy, validation only reads it, and
        # nothing changes a field's shared parts (validators, choices, a list's or dict's child)
        # after it is declared.
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

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

    def _return_url(self, value: str) -> str:
        if value:
            try:
                return_url_check(value)
            except ReturnUrlRefused as refused:
                raise serializers.ValidationError(str(refused), code="invalid_url") from refused
        return value

    def validate_redirect_url(self, value: str) -> str:
        return self._return_url(value)

    def validate_cancel_url(self, value: str) -> str:
        return self._return_url(value)

    def validate_accepted_currencies(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Each coin at most once.", code="duplicate_currency")
        return value

    def _coins(self, attrs: dict[str, Any]) -> None:
        """One coin in ``crypto_currency``, or several in ``accepted_currencies`` (then the buyer
        picks); one accepted coin is no choice and becomes ``crypto_currency``."""
        if "crypto_currency" in attrs and "accepted_currencies" in attrs:
            raise serializers.ValidationError(
                {"accepted_currencies": [serializers.ErrorDetail(
                    "Give crypto_currency or accepted_currencies, not both.", code="conflict")]}
            )  # fmt: skip
        if "crypto_currency" in attrs:
            return
        coins = attrs.get("accepted_currencies")
        if coins is None:
            coins = merchant_accepted_currencies(
                merchant=self.context["merchant"], livemode=self.context.get("livemode", True)
            )
            if not coins:
                raise serializers.ValidationError(
                    {"crypto_currency": [serializers.ErrorDetail(
                        "No wallet is configured for any coin: add one, or name crypto_currency.",
                        code="wallet_not_configured")]}
                )  # fmt: skip
        if len(coins) == 1:
            attrs.pop("accepted_currencies", None)
            attrs["crypto_currency"] = coins[0]
        else:
            attrs["accepted_currencies"] = coins

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self._coins(attrs)
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


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^[0-9]{1,78}$", "example": "40000"},
        ]
    }
)
class WholeNumberField(serializers.Field):
    """A whole number from 0 up: a JSON integer or a string of ASCII digits (for base units
    beyond what a JavaScript number holds exactly); not a bool, a float or "1e3"."""

    default_error_messages = {"invalid": "Must be a whole number (a JSON integer or digits)."}

    def __init__(self, *, max_digits: int = 78, **kwargs: Any) -> None:
        self.max_digits = max_digits
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str) and data.isascii() and data.isdigit():
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int) or data < 0:
            self.fail("invalid")
        if len(str(data)) > self.max_digits:
            self.fail("invalid")
        return data

    def to_representation(self, value: int) -> int:
        return value


def _param_error(param: str, message: str, code: str) -> serializers.ValidationError:
    return serializers.ValidationError({param: [serializers.ErrorDetail(message, code=code)]})


class PaymentSimulateSerializer(StrictSerializer):
    """``context["payment"]``: the payment to pay (its currency reads ``amount``)."""

    amount = StrictCharField(
        required=False,
        max_length=100,
        help_text='Whole coins, as `crypto_amount` is written, e.g. "0.0004". Default: what is '
        "still due.",
    )
    amount_base_units = WholeNumberField(
        required=False, help_text="The amount in base units instead (satoshi, wei...)."
    )
    confirmations = WholeNumberField(
        required=False,
        max_digits=6,
        help_text="Confirmations of the transaction. Default: what the payment requires.",
    )
    txid = StrictCharField(
        required=False,
        max_length=160,
        help_text="An earlier simulated transaction: give it `confirmations` instead of paying "
        "again.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "amount" in attrs and "amount_base_units" in attrs:
            raise _param_error(
                "amount", "Give amount or amount_base_units, not both.", "parameter_conflict"
            )
        if "txid" in attrs and ("amount" in attrs or "amount_base_units" in attrs):
            raise _param_error(
                "txid",
                "txid changes an earlier transaction's confirmations; it takes no amount.",
                "parameter_conflict",
            )
        if "amount" in attrs:
            currency = crypto(self.context["payment"].crypto_currency)
            raw = attrs["amount"]
            if not DECIMAL_STRING.fullmatch(raw):
                raise _param_error(
                    "amount", 'Must be a decimal string such as "0.0004".', "invalid"
                )
            try:
                attrs["amount_base_units"] = coins_to_base_units(
                    coins=Decimal(raw), currency=currency
                )
            except ValueError:
                raise _param_error(
                    "amount",
                    f"Must be positive with at most {currency.decimals} decimal places.",
                    "invalid_amount",
                ) from None
        elif attrs.get("amount_base_units") == 0:
            raise _param_error("amount_base_units", "Must be greater than zero.", "not_positive")
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


# One field object for every timestamp written out (it keeps no state between calls).
_DATETIME = serializers.DateTimeField()
# Fields bound to a time zone, one per zone (settings.TIME_ZONE unless a request activates
# another), kept for the process as _DATETIME is: DRF's own looks the current time zone up (a
# context-local read) for every timestamp, a payment has six or more, and these are handed out
# by ``_datetime_field`` after one lookup per payment written. Same output: a field bound to the
# current zone writes what the unbound one writes while that zone is current.
_DATETIME_IN_ZONE: dict[tzinfo, serializers.DateTimeField] = {}


def _datetime_field() -> serializers.DateTimeField:
    """A field writing timestamps in the current time zone, as ``_DATETIME`` does."""
    if not settings.USE_TZ:
        return _DATETIME  # naive timestamps: no zone to look up
    zone = timezone.get_current_timezone()
    field = _DATETIME_IN_ZONE.get(zone)
    if field is None:
        field = _DATETIME_IN_ZONE.setdefault(zone, serializers.DateTimeField(default_timezone=zone))
    return field


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def _quote(
    priced: Payment | PaymentOption, dates: serializers.DateTimeField = _DATETIME
) -> dict[str, Any]:
    return {
        "rate": _plain(priced.rate),
        "bid": _plain(priced.rate_bid),
        "ask": _plain(priced.rate_ask),
        "source": priced.rate_source,
        "providers": priced.rate_providers,
        "fetched_at": (
            None
            if priced.rate_fetched_at is None
            else dates.to_representation(priced.rate_fetched_at)
        ),
        "age_seconds": priced.rate_age_seconds,
    }


class PaymentOptionSerializer(serializers.Serializer):
    """One coin of a payment (a PaymentOption, or a single-coin Payment itself)."""

    crypto_currency = serializers.CharField()
    crypto_amount = serializers.SerializerMethodField(help_text="Exact decimal string.")
    crypto_amount_base_units = serializers.SerializerMethodField()
    deposit_address = serializers.CharField(
        allow_null=True, help_text="Allocated when the buyer picks this coin; null before."
    )
    selected = serializers.SerializerMethodField()
    quote = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.STR)
    def get_crypto_amount(self, priced: Payment | PaymentOption) -> str:
        amount = priced.priced_amount if isinstance(priced, Payment) else priced.crypto_amount
        return format_base_units(amount=amount, currency=crypto(priced.crypto_currency))

    @extend_schema_field(OpenApiTypes.STR)
    def get_crypto_amount_base_units(self, priced: Payment | PaymentOption) -> str:
        return str(priced.crypto_amount)

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_selected(self, priced: Payment | PaymentOption) -> bool:
        return bool(self.context.get("selected"))

    @extend_schema_field(QuoteSerializer)
    def get_quote(self, priced: Payment | PaymentOption) -> dict[str, Any]:
        return _quote(priced)


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
    redirect_url = serializers.CharField(
        read_only=True, help_text="Where the checkout sends the buyer once paid (empty: none)."
    )
    cancel_url = serializers.CharField(
        read_only=True, help_text="Where a buyer who gives up goes back to (empty: none)."
    )
    crypto_currency = serializers.SerializerMethodField(
        help_text="The coin the amounts are in: the one picked, null until the buyer picks one."
    )
    selected_currency = serializers.SerializerMethodField(
        help_text="The coin the buyer picked (or the one coin named at creation); null until then."
    )
    accepted_currencies = serializers.SerializerMethodField()
    payment_options = serializers.SerializerMethodField(
        help_text="Per coin the buyer may pay in: its amount and quote, and its deposit address "
        "once picked."
    )

    class Meta:
        model = Payment
        fields = [
            "id",
            "object",
            "livemode",
            "order_id",
            "description",
            "metadata",
            "amount",
            "currency",
            "crypto_currency",
            "selected_currency",
            "accepted_currencies",
            "payment_options",
            "crypto_amount",
            "crypto_amount_base_units",
            "amount_received",
            "amount_confirmed",
            "amount_due",
            "quote",
            "deposit_address",
            "checkout_url",
            "redirect_url",
            "cancel_url",
            "status",
            "sub_status",
            "required_confirmations",
            "expires_at",
            "monitoring_until",
            "created_at",
            "updated_at",
            "settled_at",
        ]

    def to_representation(self, instance: Payment) -> dict[str, Any]:
        # Written out: the declared fields (and their getters below) describe the schema; DRF's
        # field-by-field walk built and copied some 40 field objects per payment, most of a
        # payment read's time. tests/payments/test_api_payment_representation.py holds the two
        # to the same JSON.
        return payment_representation(instance, request=self.context.get("request"))

    def get_object(self, payment: Payment) -> str:
        return "payment"

    def get_checkout_url(self, payment: Payment) -> str:
        return _checkout_url(payment, self.context.get("request"))

    def get_amount(self, payment: Payment) -> str:
        return _fiat_amount(payment)

    def get_crypto_amount(self, payment: Payment) -> str | None:
        return _crypto(payment, payment.crypto_amount)

    def get_crypto_amount_base_units(self, payment: Payment) -> str | None:
        return None if payment.crypto_amount is None else str(payment.crypto_amount)

    def get_amount_received(self, payment: Payment) -> str | None:
        return _crypto(payment, payment.amount_received)

    def get_amount_confirmed(self, payment: Payment) -> str | None:
        return _crypto(payment, payment.amount_confirmed)

    def get_amount_due(self, payment: Payment) -> str | None:
        return _amount_due(payment)

    @extend_schema_field({"type": "string", "nullable": True, "enum": [*CRYPTO_CURRENCIES, None]})
    def get_selected_currency(self, payment: Payment) -> str | None:
        return payment.crypto_currency or None

    @extend_schema_field({"type": "string", "nullable": True})
    def get_crypto_currency(self, payment: Payment) -> str | None:
        return payment.crypto_currency or None

    @extend_schema_field(
        {"type": "array", "items": {"type": "string", "enum": [*CRYPTO_CURRENCIES]}}
    )
    def get_accepted_currencies(self, payment: Payment) -> list[str]:
        return list(payment.accepted_currencies) or [payment.crypto_currency]

    @extend_schema_field(PaymentOptionSerializer(many=True))
    def get_payment_options(self, payment: Payment) -> list[dict[str, Any]]:
        # DRF's way, as the reference the written-out options are held to.
        return [
            PaymentOptionSerializer(
                option, context={"selected": selected, "fiat": payment.fiat_currency}
            ).data
            for option, selected in _options(payment)
        ]

    @extend_schema_field(
        {"type": "string", "nullable": True, "enum": [*PaymentSubStatus.values[1:], None]}
    )
    def get_sub_status(self, payment: Payment) -> str | None:
        return payment.sub_status or None

    @extend_schema_field(QuoteSerializer(allow_null=True))
    def get_quote(self, payment: Payment) -> dict[str, Any] | None:
        return _quote(payment) if payment.crypto_currency else None


def _checkout_url(payment: Payment, request: Any) -> str:
    path = checkout_url(payment)
    return request.build_absolute_uri(path) if request is not None else path


def _fiat_amount(payment: Payment) -> str:
    return format_fiat(amount=payment.fiat_amount, exponent=fiat_exponent(payment.fiat_currency))


def _crypto(payment: Payment, amount: int | None) -> str | None:
    # Amounts are in the picked coin: none before the buyer picks one.
    if not payment.crypto_currency or amount is None:
        return None
    return format_base_units(amount=amount, currency=crypto(payment.crypto_currency))


def _amount_due(payment: Payment) -> str | None:
    if payment.crypto_amount is None:
        return None
    return _crypto(payment, max(payment.crypto_amount - payment.amount_received, 0))


def _option_representation(
    priced: Payment | PaymentOption, *, selected: bool, dates: serializers.DateTimeField
) -> dict[str, Any]:
    """PaymentOptionSerializer's output, written out as PaymentSerializer's is."""
    amount = priced.priced_amount if isinstance(priced, Payment) else priced.crypto_amount
    return {
        "crypto_currency": str(priced.crypto_currency),
        "crypto_amount": format_base_units(amount=amount, currency=crypto(priced.crypto_currency)),
        "crypto_amount_base_units": str(priced.crypto_amount),
        "deposit_address": None if priced.deposit_address is None else str(priced.deposit_address),
        "selected": selected,
        "quote": _quote(priced, dates),
    }


def _options(payment: Payment) -> list[tuple[Payment | PaymentOption, bool]]:
    """The coins of a payment, each with whether it is the one picked."""
    if not payment.accepted_currencies:
        # One coin named at creation: the payment itself is its only option.
        return [(payment, True)]
    options = (
        payment.options.all()
        if "options" in getattr(payment, "_prefetched_objects_cache", {})
        else PaymentOption.objects.filter(payment=payment)
    )
    return [(option, option.crypto_currency == payment.crypto_currency) for option in options]


_STATUS_VALUES = {str(value): value for value, _ in PaymentStatus.choices}


def _datetime(value: datetime | None, dates: serializers.DateTimeField) -> str | None:
    return dates.to_representation(value) if value else None


def payment_representation(payment: Payment, *, request: Any = None) -> dict[str, Any]:
    """What DRF's walk over PaymentSerializer's fields gives, in the same order and types."""
    status = payment.status
    order_id = payment.order_id
    deposit_address = payment.deposit_address
    coin = payment.crypto_currency
    dates = _datetime_field()
    return {
        "id": str(payment.public_id),
        "object": "payment",
        "livemode": bool(payment.livemode),
        "order_id": None if order_id is None else str(order_id),
        "description": str(payment.description),
        "metadata": payment.metadata,
        "amount": _fiat_amount(payment),
        "currency": str(payment.fiat_currency),
        "crypto_currency": coin or None,
        "selected_currency": coin or None,
        "accepted_currencies": list(payment.accepted_currencies) or [coin],
        "payment_options": [
            _option_representation(priced, selected=selected, dates=dates)
            for priced, selected in _options(payment)
        ],
        "crypto_amount": _crypto(payment, payment.crypto_amount),
        "crypto_amount_base_units": (
            None if payment.crypto_amount is None else str(payment.crypto_amount)
        ),
        "amount_received": _crypto(payment, payment.amount_received),
        "amount_confirmed": _crypto(payment, payment.amount_confirmed),
        "amount_due": _amount_due(payment),
        "quote": _quote(payment, dates) if coin else None,
        "deposit_address": None if deposit_address is None else str(deposit_address),
        "checkout_url": _checkout_url(payment, request),
        "redirect_url": str(payment.redirect_url),
        "cancel_url": str(payment.cancel_url),
        "status": status if status in ("", None) else _STATUS_VALUES.get(str(status), status),
        "sub_status": payment.sub_status or None,
        "required_confirmations": int(payment.required_confirmations),
        "expires_at": _datetime(payment.expires_at, dates),
        "monitoring_until": _datetime(payment.monitoring_until, dates),
        "created_at": _datetime(payment.created_at, dates),
        "updated_at": _datetime(payment.updated_at, dates),
        "settled_at": _datetime(payment.settled_at, dates),
    }


for _name in ("get_object", "get_amount"):
    extend_schema_field(OpenApiTypes.STR)(getattr(PaymentSerializer, _name))
# In the picked coin: null until the buyer picks one.
for _name in ("get_crypto_amount", "get_crypto_amount_base_units", "get_amount_received",
              "get_amount_confirmed", "get_amount_due"):  # fmt: skip
    extend_schema_field({"type": "string", "nullable": True})(getattr(PaymentSerializer, _name))


class PaymentListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = PaymentSerializer(many=True)  # type: ignore[assignment]  # DRF moves declared fields off the class
    has_more = serializers.BooleanField()


class SimulatedTransactionSerializer(serializers.Serializer):
    object = serializers.CharField(default="simulated_transaction")
    txid = serializers.CharField(help_text="Pass it as `txid` to change its confirmations later.")
    amount = serializers.CharField(help_text="Whole coins.")
    amount_base_units = serializers.CharField()
    confirmations = serializers.IntegerField()
    payment = serializers.SerializerMethodField()

    @extend_schema_field(PaymentSerializer)
    def get_payment(self, simulated: dict[str, Any]) -> dict[str, Any]:
        return PaymentSerializer(simulated["payment"], context=self.context).data
