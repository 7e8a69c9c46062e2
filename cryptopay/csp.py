"""Content-Security-Policy with a per-request nonce, and Permissions-Policy, on every response.

Django 5.2 has no CSP of its own (6.0 adds one); django-csp would bring a second settings
vocabulary for what is one header built here. Every page we serve loads its scripts and styles
from our own static files: the checkout page (payments/static), the admin, the resilience
dashboard (its one inline ``<style>`` carries ``nonce="{{ request.csp_nonce }}"``). So scripts
and styles are ``'self'`` plus the request's nonce; no inline script runs without it.

The API docs page is the exception: Redoc (drf-spectacular-sidecar, our static files too) injects
``<style>`` elements at run time and starts its search worker from a ``blob:`` URL, so /api/docs/
gets ``'unsafe-inline'`` styles and ``blob:`` workers; its scripts stay ``'self'``-only. The
staff-only HTML of /health (django-health-check's template, an inline ``<style>``, no script)
gets ``'unsafe-inline'`` styles too.

Referrer-Policy comes from Django's SecurityMiddleware (``SECURE_REFERRER_POLICY``); the checkout
pages, whose URLs carry the buyer's token, send ``no-referrer`` (as their ``<meta>`` does).
"""

from __future__ import annotations

import secrets

from django.http import HttpRequest, HttpResponse

DOCS_PREFIX = "/api/docs/"
HEALTH_PREFIX = "/health"
CHECKOUT_PREFIX = "/pay/"

# Browser features no page of ours uses; a script injected into one gets none of them.
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer", "camera", "display-capture", "geolocation", "gyroscope", "hid",
        "magnetometer", "microphone", "midi", "payment", "serial", "usb",
    )
)  # fmt: skip


def policy(request: HttpRequest, nonce: str) -> str:
    # CSP 3 lets 'self' match same-host ws:/wss:, older browsers do not: name the socket's origin.
    socket_origin = ("wss://" if request.is_secure() else "ws://") + request.get_host()
    directives = {
        "default-src": "'self'",
        "script-src": f"'self' 'nonce-{nonce}'",
        "style-src": f"'self' 'nonce-{nonce}'",
        "img-src": "'self' data:",
        "font-src": "'self'",
        "connect-src": f"'self' {socket_origin}",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    if request.path.startswith(DOCS_PREFIX):
        directives["style-src"] = "'self' 'unsafe-inline'"
        directives["worker-src"] = "'self' blob:"
    elif request.path.startswith(HEALTH_PREFIX):
        directives["style-src"] = "'self' 'unsafe-inline'"
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        nonce = secrets.token_urlsafe(16)
        request.csp_nonce = nonce  # type: ignore[attr-defined]  # the stub's HttpRequest has no per-request attributes
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", policy(request, nonce))
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        if request.path.startswith(CHECKOUT_PREFIX):
            response["Referrer-Policy"] = "no-referrer"
        return response
