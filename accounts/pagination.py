"""Keyset pagination shared by the API's lists: newest first on (created_at, id), so a page stays
correct while rows are being written (offsets would skip or repeat them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from django.db.models import Q, QuerySet
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def page_of(qs: QuerySet, *, limit: int) -> Page:
    """``limit`` rows of an ordered queryset, and whether more follow."""
    rows = list(qs[: limit + 1])
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def after(cursor_created_at: datetime, cursor_pk: int) -> Q:
    """Rows after the cursor in a newest-first (created_at, id) order."""
    return Q(created_at__lt=cursor_created_at) | Q(created_at=cursor_created_at, pk__lt=cursor_pk)


def newest_first(qs: QuerySet, *, limit: int, cursor: tuple[datetime, int] | None) -> Page:
    if cursor is not None:
        qs = qs.filter(after(*cursor))
    return page_of(qs.order_by("-created_at", "-pk"), limit=limit)


def invalid_cursor(what: str) -> serializers.ValidationError:
    """The 400 for a ``starting_after`` that names nothing this client can see."""
    return serializers.ValidationError(
        {"starting_after": [serializers.ErrorDetail(f"No such {what}.", code="invalid_cursor")]}
    )


def list_response(
    page: Page, serializer_class: type[serializers.Serializer], *, request: Request | None = None
) -> Response:
    """The API's list body: ``{"object": "list", "data": [...], "has_more": ...}``."""
    return Response(
        {
            "object": "list",
            "data": serializer_class(page.items, many=True, context={"request": request}).data,
            "has_more": page.has_more,
        }
    )
