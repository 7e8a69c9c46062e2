"""The registry of event types: each app declares the events it publishes, with their priority,
once (in its ``AppConfig.ready``), as apps register their health probes. The outbox takes an
event's priority from here; the webhook endpoint forms and the API offer these types."""

from __future__ import annotations

from notifications.models import Priority

_priorities: dict[str, str] = {}


def event_type_register(*, type: str, priority: str) -> None:
    """Declare an event type and the priority its notifications are delivered with."""
    if priority not in Priority.values:
        raise ValueError(f"unknown priority {priority!r} for event type {type!r}")
    registered = _priorities.setdefault(type, priority)
    if registered != priority:
        raise ValueError(f"event type {type!r} is registered already with priority {registered}")


def event_priority(type: str) -> str:
    """The type's registered priority; Normal for a type no app declared."""
    return _priorities.get(type, Priority.NORMAL)


def event_types() -> list[str]:
    """Every registered type, sorted."""
    return sorted(_priorities)


def event_type_choices() -> list[tuple[str, str]]:
    """Form choices, read when the form is built (apps register after the admin is loaded)."""
    return [(type, type) for type in event_types()]
