"""Request fields and query parsing that accept exactly what the OpenAPI schema says.

DRF is lenient where the schema is not: a CharField takes ``0`` and stores ``"0"``, a
BooleanField takes ``0``, ``"yes"`` or ``"on"``, and a query parameter sent empty (``?status=``)
counts as not sent. The schema promises JSON strings, JSON booleans and non-empty parameters;
these make the API keep that promise (schemathesis found each of them).
"""

from __future__ import annotations

from typing import Any

from django.core.validators import ProhibitNullCharactersValidator, RegexValidator
from rest_framework import serializers
from rest_framework.request import Request

NO_NUL = RegexValidator(
    r"^[^\x00]+$",  # "+": a blank is judged (allowed or not) before validators run
    message=ProhibitNullCharactersValidator.message,
    code=ProhibitNullCharactersValidator.code,
)


class StrictCharField(serializers.CharField):
    """A JSON string, never a number coerced to one, taken as sent: not trimmed (DRF would turn
    ``" "`` or ``"\\x1f"`` into a blank and refuse a value the schema allows)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        # DRF refuses NUL (PostgreSQL text cannot hold it); as a regex the schema says so too.
        self.validators = [
            NO_NUL if isinstance(v, ProhibitNullCharactersValidator) else v for v in self.validators
        ]

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``, not ``0``, ``"yes"`` or ``"on"``."""

    def to_internal_value(self, data: Any) -> bool:
        if data is True or data is False:
            return data
        self.fail("invalid")


class QueryBooleanField(serializers.BooleanField):
    """``true`` or ``false`` in a query string, as the schema's boolean is written; not ``1``,
    ``yes`` or an empty value."""

    def to_internal_value(self, data: Any) -> bool:
        if data in ("true", "false"):
            return data == "true"
        self.fail("invalid")


def query_data(request: Request) -> dict[str, str]:
    """The query parameters for a query serializer, an empty value included (``?limit=`` is
    refused as a blank, not read as absent). A repeated parameter counts with its last value."""
    return request.query_params.dict()
