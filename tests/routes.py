"""The API's routes as Django's URL resolver knows them, for tests that must cover every one
(the schema lists them all; merchant isolation holds on each)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from django.urls import URLPattern, URLResolver, get_resolver


def api_url_patterns(prefix: str = "api/v1/") -> Iterator[tuple[str, URLPattern]]:
    """(path in OpenAPI syntax, e.g. ``/api/v1/payments/{public_id}``, pattern) under ``prefix``."""

    def walk(patterns, route_prefix: str) -> Iterator[tuple[str, URLPattern]]:
        for entry in patterns:
            route = route_prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern) and route.startswith(prefix):
                yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route), entry

    yield from walk(get_resolver().url_patterns, "")
