"""Domain errors raised by payment services; each maps to one API error code."""

from __future__ import annotations

import math

from django.conf import settings
from rest_framework import status

from cryptopay.api_errors import API, ApiError


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

    @property
    def retry_after(self) -> int:  # type: ignore[override]
        return max(1, math.ceil(settings.RATES_RETRY_AFTER.total_seconds()))


class AddressUnavailable(ApiError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "wallet_not_configured"
