"""Request fields and query parsing that accept exactly what the OpenAPI schema says.

DRF is lenient where the schema is not: a CharField takes ``0`` and stores ``"0"``, a
BooleanField takes ``0``, ``"yes"`` or ``"on"``, and a query parameter sent empty (``?status=``)
counts as not sent. The schema promises JSON strings, JSON booleans and non-empty parameters;
these make the API keep that promise (schemathesis found each of them).

DRF also drops request fields it does not know, so a misspelt ``amout`` would be ignored and the
payment created without it being noticed: ``StrictSerializer`` refuses them, as Stripe does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator, RegexValidator
from rest_framework import serializers
from rest_framework.request import Request

NO_NUL = RegexValidator(
    # "*", not "+": a blank is judged (allow_blank, minLength 1 in the schema) before validators
    # run, and a blank default ("") must match the pattern for the schema to be valid OpenAPI.
    r"^[^\x00]*$",
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


UNKNOWN_PARAMETER = "parameter_unknown"


def _unknown_parameters(data: Any, known: Any) -> None:
    if not isinstance(data, Mapping):
        return  # not an object: the serializer refuses it in its own words
    unknown = [str(name) for name in data if name not in known]
    if unknown:
        raise serializers.ValidationError(
            {
                name: [
                    serializers.ErrorDetail(
                        f"Received unknown parameter: {name}", code=UNKNOWN_PARAMETER
                    )
                ]
                for name in unknown
            }
        )


# A request body serializer that refuses fields it does not declare (400 parameter_unknown naming
# the field) before judging the ones it knows. A comment, not a docstring: drf-spectacular would
# show an inherited docstring as every request body's description.
class StrictSerializer(serializers.Serializer):
    def to_internal_value(self, data: Any) -> Any:
        writable = {name for name, field in self.fields.items() if not field.read_only}
        _unknown_parameters(data, writable)
        return super().to_internal_value(data)


def refuse_body_parameters(request: Request) -> None:
    """For a write that takes no parameters (cancel, rotate, delete): any field sent is unknown."""
    _unknown_parameters(request.data, ())


def close_request_bodies(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: request bodies say ``additionalProperties: false``,
    as ``StrictSerializer`` enforces, so clients and the fuzzer know an extra field is refused."""
    components = result.get("components", {}).get("schemas", {})
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            content = (operation.get("requestBody") or {}).get("content", {})
            for media in content.values():
                ref = media.get("schema", {}).get("$ref", "")
                name = ref.rsplit("/", 1)[-1]
                if name in components and components[name].get("type") == "object":
                    components[name]["additionalProperties"] = False
    return result
