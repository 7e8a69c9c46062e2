"""Domain errors raised by payment services; each maps to one API error code."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import Http404
from rest_framework import status

from accounts.api_errors import API, PERMISSION, ApiError


class InvalidTransition(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "invalid_state_transition"


class CurrencyNotSwitchable(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "currency_locked"


class DuplicateOrderId(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "order_id_already_exists"


class RateUnavailable(ApiError):
    # Like BTCPay, no payment is created without a rate; the client may retry later.
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_type = API
    code = "rate_unavailable"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = max(1, math.ceil(settings.RATES_RETRY_AFTER.total_seconds()))


class AddressUnavailable(ApiError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "wallet_not_configured"


class PaymentInOtherMode(ApiError, Http404):
    """The merchant's own payment, asked for with a key of the other mode: a 404 like any missing
    payment (an Http404 to callers that treat it so), with Stripe's hint about the key."""

    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class TestModeOnly(ApiError):
    """A test helper (``simulate``) called with a live key."""

    status_code = status.HTTP_403_FORBIDDEN
    error_type = PERMISSION
    code = "test_mode_only"
