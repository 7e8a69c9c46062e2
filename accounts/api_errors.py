"""The API's one error shape: ``{"error": {"type", "code", "message", "param"}}``.

Everything under ``/api/`` answers in this shape: DRF exceptions (through
``api_exception_handler``), domain errors raised by services (``ApiError`` subclasses), and what
Django itself produces before or around a view (unknown URL, oversized body, unexpected
exceptions), through ``ApiErrorMiddleware``. No HTML page and no traceback ever reaches a client.
"""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal
from typing import Any

from django import db
from django.conf import settings
from django.core.exceptions import DisallowedHost, PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
API = "api_error"
RATE_LIMIT = "rate_limit_error"


class ApiError(Exception):
    """A client-facing error with a stable code. Services raise subclasses of it."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    error_type: str = INVALID_REQUEST
    code: str = "invalid_request"
    # Seconds for the Retry-After header; every 503 carries one (1 s unless the error knows better).
    retry_after: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


def error_body(
    *, error_type: str, code: str, message: str, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "error": {"type": error_type, "code": code, "message": message, "param": param, **extra}
    }


def error_response(
    *, status_code: int, error_type: str, code: str, message: str, param: str | None = None
) -> JsonResponse:
    return JsonResponse(
        error_body(error_type=error_type, code=code, message=message, param=param),
        status=status_code,
    )


def _error_type(status_code: int) -> str:
    if status_code == status.HTTP_401_UNAUTHORIZED:
        return AUTHENTICATION
    if status_code == status.HTTP_403_FORBIDDEN:
        return PERMISSION
    if status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        return RATE_LIMIT
    return API if status_code >= 500 else INVALID_REQUEST


def status_error_response(
    *, status_code: int, code: str, message: str, param: str | None = None
) -> JsonResponse:
    """An error answer whose type follows from its status: the renderer of code that does not
    know the API's error types (resilience's, through RESILIENCE_ERROR_RESPONSE)."""
    return error_response(
        status_code=status_code,
        error_type=_error_type(status_code),
        code=code,
        message=message,
        param=param,
    )


class DecimalJSONParser(JSONParser):
    """JSON parser that reads numbers with a fraction as ``Decimal``: no float touches an amount.

    Nesting deeper than API_JSON_MAX_DEPTH is refused before parsing: the decoder (and every
    recursive walk after it: validation, canonical bodies, rendering) would otherwise hit Python's
    recursion limit at ~1,000 levels and answer 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding) if stream is not None else ""
            _check_depth(text, settings.API_JSON_MAX_DEPTH)
            return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"Malformed JSON: {exc}") from exc
        except RecursionError as exc:  # a limit set above what this interpreter's stack allows
            raise exceptions.ParseError(_too_deep_message(), code=TOO_DEEP) from exc


TOO_DEEP = "json_too_deep"
# Strings first (their brackets are text, and an escaped quote does not end them), then brackets;
# a lone quote is an unterminated string. Possessive, so no input makes the scan backtrack.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}"]')


def _check_depth(text: str, limit: int) -> None:
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        lexeme = match.group()
        if lexeme in "[{":
            depth += 1
            if depth > limit:
                raise exceptions.ParseError(_too_deep_message(), code=TOO_DEEP)
        elif lexeme in "]}":
            depth -= 1  # unbalanced input is the decoder's to reject
        elif lexeme == '"':
            return  # unterminated string: malformed, the decoder says so (and scanning on is O(n²))


def _too_deep_message() -> str:
    return f"JSON nested deeper than {settings.API_JSON_MAX_DEPTH} levels."


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _flatten_validation(detail: Any, prefix: str = "") -> list[tuple[str | None, str, str]]:
    """Turn DRF's nested error detail into (param, code, message) triples, in field order."""
    items: list[tuple[str | None, str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key)
            if name == "non_field_errors":
                param = prefix or None
            else:
                param = f"{prefix}[{name}]" if prefix else name
            items.extend(_flatten_validation(value, param or ""))
    elif isinstance(detail, list):
        for value in detail:
            items.extend(_flatten_validation(value, prefix))
    else:
        code = getattr(detail, "code", None) or "invalid"
        items.append((prefix or None, str(code), str(detail)))
    return items


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, ApiError):
        retry_after = exc.retry_after
        if retry_after is None and exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            retry_after = 1
        return Response(
            error_body(
                error_type=exc.error_type, code=exc.code, message=exc.message, param=exc.param
            ),
            status=exc.status_code,
            headers={} if retry_after is None else {"Retry-After": str(retry_after)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(_too_large_body(), status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)

    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten_validation(exc.detail)
        param, code, message = errors[0] if errors else (None, "invalid", "Invalid request.")
        body = error_body(
            error_type=INVALID_REQUEST,
            code=code,
            message=message,
            param=param,
            errors=[{"param": p, "code": c, "message": m} for p, c, m in errors],
        )
        return Response(body, status=status.HTTP_400_BAD_REQUEST)

    if isinstance(exc, exceptions.APIException):
        error_type, code = _classify(exc)
        headers: dict[str, str] = {}
        # Set on the exception by DRF's view (``auth_header``) and by throttles (``wait``).
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        wait = getattr(exc, "wait", None)
        if wait:
            headers["Retry-After"] = str(int(wait))
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return Response(
            error_body(error_type=error_type, code=code, message=str(message)),
            status=exc.status_code,
            headers=headers,
        )

    if isinstance(exc, DatabaseUnavailable):
        logger.warning(
            "database unavailable in %s: %s", context.get("view").__class__.__name__, exc
        )
        return Response(_unavailable_body(), status=503, headers={"Retry-After": "1"})
    logger.exception("Unhandled error in API view %s", context.get("view").__class__.__name__)
    return Response(_internal_error_body(), status=status.HTTP_500_INTERNAL_SERVER_ERROR)


# The database connection broke (terminated, reset, failed over): a transient outage, not a bug.
# The transaction rolled back, so a retry with the same Idempotency-Key is safe: 503, retry soon.
DatabaseUnavailable = (db.OperationalError, db.InterfaceError)


def _unavailable_body() -> dict[str, Any]:
    return error_body(
        error_type=API,
        code="service_unavailable",
        message="The database is briefly unavailable; retry the request (same Idempotency-Key).",
    )


def _classify(exc: exceptions.APIException) -> tuple[str, str]:
    if isinstance(exc, exceptions.NotAuthenticated):
        return AUTHENTICATION, "authentication_required"
    if isinstance(exc, exceptions.AuthenticationFailed):
        code = exc.get_codes()
        return AUTHENTICATION, code if isinstance(code, str) else "authentication_failed"
    if isinstance(exc, exceptions.PermissionDenied):
        code = exc.get_codes()
        return PERMISSION, code if isinstance(code, str) else "permission_denied"
    if isinstance(exc, exceptions.NotFound):
        return INVALID_REQUEST, "not_found"
    if isinstance(exc, exceptions.MethodNotAllowed):
        return INVALID_REQUEST, "method_not_allowed"
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return INVALID_REQUEST, "unsupported_media_type"
    if isinstance(exc, exceptions.NotAcceptable):
        return INVALID_REQUEST, "not_acceptable"
    if isinstance(exc, exceptions.ParseError):
        code = exc.get_codes()
        return INVALID_REQUEST, code if code == TOO_DEEP else "malformed_json"
    if isinstance(exc, exceptions.Throttled):
        return RATE_LIMIT, "rate_limited"
    if exc.status_code >= 500:
        return API, "internal_error"
    code = exc.get_codes()
    return INVALID_REQUEST, code if isinstance(code, str) else "invalid_request"


def _too_large_body() -> dict[str, Any]:
    return error_body(
        error_type=INVALID_REQUEST,
        code="payload_too_large",
        message=f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
    )


def _internal_error_body() -> dict[str, Any]:
    return error_body(
        error_type=API,
        code="internal_error",
        message="An unexpected error occurred. It has been logged; retrying may succeed.",
    )


_STATUS_CODES = {
    400: (INVALID_REQUEST, "bad_request", "The request could not be understood."),
    403: (PERMISSION, "forbidden", "Forbidden."),
    404: (INVALID_REQUEST, "not_found", "No such resource."),
    405: (INVALID_REQUEST, "method_not_allowed", "Method not allowed."),
    413: (INVALID_REQUEST, "payload_too_large", "Request body too large."),
}


class ApiErrorMiddleware:
    """Keeps non-DRF answers under /api/ in the error shape (unknown URLs, 500s, huge bodies)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        too_large = self._check_body_size(request)
        if too_large is not None:
            return too_large
        response = self.get_response(request)
        if response.status_code >= 400 and not _is_json(response):
            response = self._reshape(response)
        if response.status_code == 503 and not response.has_header("Retry-After"):
            response["Retry-After"] = "1"  # a 503 the code did not time: retry soon
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(API_PREFIX):
            return None
        if isinstance(exception, Http404):
            return error_response(status_code=404, **_kw(404))
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse(_too_large_body(), status=413)
        if isinstance(exception, DatabaseUnavailable):
            logger.warning(
                "database unavailable on %s %s: %s", request.method, request.path, exception
            )
            response = JsonResponse(_unavailable_body(), status=503)
            response["Retry-After"] = "1"
            return response
        logger.exception("Unhandled error on %s %s", request.method, request.path)
        return JsonResponse(_internal_error_body(), status=500)

    def _check_body_size(self, request: HttpRequest) -> HttpResponse | None:
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            return error_response(
                status_code=400,
                error_type=INVALID_REQUEST,
                code="bad_request",
                message="Content-Length is not a number.",
            )
        if length > settings.API_MAX_BODY_BYTES:
            return JsonResponse(_too_large_body(), status=413)
        return None

    def _reshape(self, response: HttpResponse) -> HttpResponse:
        status_code = response.status_code
        if status_code in _STATUS_CODES:
            reshaped = error_response(status_code=status_code, **_kw(status_code))
        elif status_code >= 500:
            reshaped = JsonResponse(_internal_error_body(), status=status_code)
        else:
            reshaped = error_response(
                status_code=status_code,
                error_type=INVALID_REQUEST,
                code="invalid_request",
                message=response.reason_phrase or "Invalid request.",
            )
        if response.has_header("Allow"):
            reshaped["Allow"] = response["Allow"]
        return reshaped


class DisallowedHostMiddleware:
    """A Host header outside ALLOWED_HOSTS gets 400 in the error shape, on every path. Left to
    Django, it is a SuspiciousOperation whose answer with DEBUG on (embedded mode) is the debug
    page: settings, installed apps and the request, to anyone who sends a wrong Host."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost:
            logger.warning("refused a request for a host not in ALLOWED_HOSTS: %s", request.path)
            return error_response(
                status_code=400,
                error_type=INVALID_REQUEST,
                code="bad_host",
                message="The Host header names no site served here.",
            )
        return self.get_response(request)


def _kw(status_code: int) -> dict[str, str]:
    error_type, code, message = _STATUS_CODES[status_code]
    return {"error_type": error_type, "code": code, "message": message}


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("application/json")
