"""Error answers resilience gives a client (idempotency refusals, the health endpoint's 401), in
the error shape of the project that mounts it: resilience knows no shape of its own.

``RESILIENCE_ERROR_RESPONSE`` names the renderer, a callable
``f(*, status_code: int, code: str, message: str, param: str | None) -> HttpResponse``.
"""

from __future__ import annotations

from typing import Protocol

from django.conf import settings
from django.http import HttpResponse
from django.utils.module_loading import import_string


class ErrorRenderer(Protocol):
    def __call__(
        self, *, status_code: int, code: str, message: str, param: str | None = None
    ) -> HttpResponse: ...


def error_response(
    *, status_code: int, code: str, message: str, param: str | None = None
) -> HttpResponse:
    """The configured renderer's answer (looked up per call: settings may be overridden)."""
    render: ErrorRenderer = import_string(settings.RESILIENCE_ERROR_RESPONSE)
    return render(status_code=status_code, code=code, message=message, param=param)
