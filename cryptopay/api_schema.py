"""drf-spectacular postprocessing: what every operation shares, said once for the whole schema.

Every write (POST, PATCH, DELETE) goes through the idempotency gate (``resilience.idempotency``):
it takes an ``Idempotency-Key`` header and can answer 409 (the key's first request still runs)
and 422 (the key was used with another request). Operations are tagged by the resource their
path names, in the order of ``TAGS`` (the docs page lists them so).
"""

from __future__ import annotations

from typing import Any

from accounts.openapi import ERROR_REF
from resilience.idempotency import HEADER, MAX_KEY_LENGTH, REPLAYED_HEADER

WRITE_METHODS = ("post", "put", "patch", "delete")

# (tag, description, first path segment after /api/v1/), in the docs' order.
RESOURCES = (
    ("Payments", "Create, fetch, list and cancel payments.", "payments"),
    ("Rates", "Exchange rate quotes with their provenance.", "rates"),
    ("Events", "What happened to your objects; redeliver an event's webhooks.", "events"),
    (
        "Webhook endpoints",
        "Where events are sent, their signing secrets and delivery attempts.",
        "webhook-endpoints",
    ),
)
TAGS = [{"name": tag, "description": text} for tag, text, _ in RESOURCES]

IDEMPOTENCY_PARAMETER = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "description": (
        "Makes a retry safe: the first request with this key executes, later ones with the same "
        "request get its answer again (header `Idempotent-Replayed: true`) for 24 hours. A key "
        "used with another method, path or body is a 422 `idempotency_key_reused`; a key whose "
        "first request is still running is a 409 `idempotency_key_in_use` with `Retry-After`. "
        f"1 to {MAX_KEY_LENGTH} printable ASCII characters (a UUID is a good key)."
    ),
    # Printable ASCII without leading or trailing blanks; a bare key must not start with a quote
    # (a quoted key is a structured-field string, also accepted but not worth offering here).
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": f"^[!#-~](?:[ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$",
    },
}
IN_USE = (
    "A request with this `Idempotency-Key` is still being processed "
    "(`idempotency_key_in_use`, with `Retry-After`)"
)
REUSED = (
    "This `Idempotency-Key` was already used with a different request (`idempotency_key_reused`)"
)
REPLAYED = {
    REPLAYED_HEADER: {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present when this answer is the replay of an earlier request's.",
    }
}


def _tag(path: str) -> str | None:
    segment = path.removeprefix("/api/v1/").split("/", 1)[0]
    return next((tag for tag, _, prefix in RESOURCES if prefix == segment), None)


def _document_idempotency(operation: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("in") == "header" and p.get("name") == HEADER for p in parameters):
        parameters.append(dict(IDEMPOTENCY_PARAMETER))
    responses = operation.setdefault("responses", {})
    conflict = responses.get("409")
    if conflict is None:
        responses["409"] = {"content": {"application/json": {"schema": ERROR_REF}}}
        responses["409"]["description"] = IN_USE
    elif IN_USE not in conflict.get("description", ""):
        conflict["description"] = f"{conflict.get('description') or 'Conflict'}; or: {IN_USE}"
    unprocessable = responses.setdefault(
        "422", {"content": {"application/json": {"schema": ERROR_REF}}, "description": REUSED}
    )
    if REUSED not in unprocessable.get("description", ""):
        unprocessable["description"] = f"{unprocessable.get('description')}; or: {REUSED}"
    for status, response in responses.items():
        if status.startswith("2"):
            response.setdefault("headers", {}).update(REPLAYED)


def document_operations(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Tags per resource, and the idempotency header and answers on every write."""
    for path, operations in result.get("paths", {}).items():
        tag = _tag(path)
        for method, operation in operations.items():
            if tag is not None:
                operation["tags"] = [tag]
            if method in WRITE_METHODS:
                _document_idempotency(operation)
    result["tags"] = TAGS
    return result
