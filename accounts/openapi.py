"""What the API's OpenAPI schema says the same way for every view: the error component and the
error answers every operation can give. Views spread ``ERRORS`` into their ``responses`` and add
their own (``error_response``) for the codes only they answer."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from accounts.api_errors import API, AUTHENTICATION, INVALID_REQUEST, PERMISSION, RATE_LIMIT


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.ChoiceField(
        choices=[INVALID_REQUEST, AUTHENTICATION, PERMISSION, API, RATE_LIMIT]
    )
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    errors = serializers.ListField(  # type: ignore[assignment]  # DRF moves declared fields off the class
        child=serializers.DictField(), required=False, help_text="Every validation error (400)."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# The component ``ErrorSerializer`` registers, for schema text written by hand (postprocessing).
ERROR_REF = {"$ref": "#/components/schemas/Error"}


def error_response(description: str) -> OpenApiResponse:
    """An error answer in the API's error shape."""
    return OpenApiResponse(ErrorSerializer, description=description)


ERRORS = {
    code: error_response(text)
    for code, text in {
        400: "Invalid request",
        401: "Missing, invalid or revoked API key",
        403: "The API key lacks the required scope",
        404: "No such object (or it belongs to another merchant)",
        405: "Method not allowed",
        413: "Body too large",
        415: "Unsupported media type",
        500: "Unexpected error",
    }.items()
}
