"""Thin API views for webhooks and events: parse and validate, call a service or selector, serialize.

The caller is ``request.user`` (an ``accounts.auth.ApiClient``): its ``owner`` is its merchant's
public id, which is what notifications call the owner, and its ``livemode`` its key's mode.
Another owner's endpoints and events, and the other mode's, answer 404, as if they did not exist.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypedDict

from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api_errors import ApiError
from accounts.api_fields import (
    QueryBooleanField,
    StrictCharField,
    query_data,
    refuse_body_parameters,
)
from accounts.auth import request_client
from accounts.models import ApiKeyScope
from accounts.openapi import ERRORS, error_response
from accounts.pagination import invalid_cursor, list_response
from notifications import endpoints, selectors
from notifications.api.serializers import (
    EventListSerializer,
    EventRedeliverSerializer,
    EventSerializer,
    WebhookDeliveryListSerializer,
    WebhookDeliverySerializer,
    WebhookEndpointCreateSerializer,
    WebhookEndpointListSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointUpdateSerializer,
    WebhookEndpointWithSecretSerializer,
)
from notifications.delivery import webhook_redeliver
from notifications.destinations import DestinationRefused
from notifications.models import WebhookEndpoint
from resilience.idempotency import HEADER as IDEMPOTENCY_HEADER
from resilience.idempotency import idempotent

MANAGE = ApiKeyScope.WEBHOOKS_MANAGE.value
READ = ApiKeyScope.PAYMENTS_READ.value

CONFLICT = {409: error_response("Nothing to redeliver (see the code)")}


class UrlNotAllowed(ApiError):
    code = "url_not_allowed"


class NothingToRedeliver(ApiError):
    status_code = status.HTTP_409_CONFLICT


def _url_refused() -> UrlNotAllowed:
    # The service's message names the address the host resolved to; an API caller probing
    # internal host names must not learn it.
    return UrlNotAllowed(
        "Webhook URLs must be http(s) and their host must resolve, to public addresses only "
        "(private, loopback, link-local and reserved ones are refused).",
        param="url",
    )


def idempotent_when_keyed(*, response_has_secret: bool = False) -> Callable:
    """``@idempotent()`` for a request that sends an Idempotency-Key; without one, it just runs.

    For writes a client may repeat on purpose with the same body: rotating a secret again,
    redelivering again, PATCHing ``enabled`` back. The automatic key (derived from the body)
    would replay the first answer for IDEMPOTENCY_EXPIRY instead: the old secret, the old
    attempt, a stale state. Each of these is safe to run twice; with a key, a retry replays.
    """

    def decorate(handler: Callable) -> Callable:
        gated = idempotent(response_has_secret=response_has_secret)(handler)

        @functools.wraps(handler)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
            if IDEMPOTENCY_HEADER in request.headers:
                return gated(view, request, *args, **kwargs)
            return handler(view, request, *args, **kwargs)

        return wrapper

    return decorate


class Scope(TypedDict):
    owner: str
    livemode: bool


def _caller(request: Request) -> Scope:
    """What every read and write here is scoped by: the caller's owner and mode."""
    caller = request_client(request)
    return {"owner": caller.owner, "livemode": caller.livemode}


class PageQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=10)
    starting_after = StrictCharField(
        required=False, max_length=32, help_text="The last id of the previous page."
    )


# --- webhook endpoints --------------------------------------------------------------------------


class WebhookEndpointListCreateView(APIView):
    required_scopes = {"GET": MANAGE, "POST": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_list",
        parameters=[PageQuerySerializer],
        responses={200: WebhookEndpointListSerializer, **ERRORS},
        description="Your webhook endpoints, newest first. Pass the last id of a page as "
        "`starting_after`.",
    )
    def get(self, request: Request) -> Response:
        query = PageQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        try:
            page = selectors.webhook_endpoint_list(
                **_caller(request),
                limit=query.validated_data["limit"],
                starting_after=query.validated_data.get("starting_after"),
            )
        except Http404:
            raise invalid_cursor("webhook endpoint")
        return list_response(page, WebhookEndpointSerializer)

    @extend_schema(
        operation_id="webhook_endpoints_create",
        request=WebhookEndpointCreateSerializer,
        responses={201: WebhookEndpointWithSecretSerializer, **ERRORS},
        description="Create an endpoint. The answer carries its signing `secret`, shown this "
        "once: events are signed with it (header `Cryptopay-Signature: t=…,v1=…`). A URL "
        "that is not http(s) or resolves to a private address is refused (`url_not_allowed`).",
    )
    @idempotent(response_has_secret=True)
    def post(self, request: Request) -> Response:
        serializer = WebhookEndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            endpoint, secret = endpoints.webhook_endpoint_create(
                **_caller(request),
                url=data["url"],
                event_types=data["event_types"],
                description=data["description"],
                enabled=data["enabled"],
            )
        except DestinationRefused:
            raise _url_refused()
        return Response(
            WebhookEndpointWithSecretSerializer(endpoint, context={"secret": secret}).data,
            status=status.HTTP_201_CREATED,
        )


class WebhookEndpointDetailView(APIView):
    required_scopes = {"GET": MANAGE, "PATCH": MANAGE, "DELETE": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        responses={200: WebhookEndpointSerializer, **ERRORS},
    )
    def get(self, request: Request, public_id: str) -> Response:
        endpoint = selectors.webhook_endpoint_get(**_caller(request), public_id=public_id)
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_update",
        request=WebhookEndpointUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **ERRORS},
        description="Change the URL, event types, description or enabled flag; fields not sent "
        "stay as they are. A new URL is checked like on creation.",
    )
    @idempotent_when_keyed()
    def patch(self, request: Request, public_id: str) -> Response:
        endpoint = selectors.webhook_endpoint_get(**_caller(request), public_id=public_id)
        serializer = WebhookEndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            endpoints.webhook_endpoint_update(endpoint=endpoint, **data)
        except DestinationRefused:
            raise _url_refused()
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_delete",
        request=None,
        responses={204: OpenApiResponse(description="Deleted, with its deliveries."), **ERRORS},
        description="Delete the endpoint. Its deliveries and their logs go with it; to keep "
        "them, disable it instead (PATCH `enabled: false`).",
    )
    @idempotent()
    def delete(self, request: Request, public_id: str) -> Response:
        refuse_body_parameters(request)
        endpoint = selectors.webhook_endpoint_get(**_caller(request), public_id=public_id)
        endpoints.webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointRotateSecretView(APIView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        request=None,
        responses={200: WebhookEndpointWithSecretSerializer, **ERRORS},
        description="A new signing `secret`, shown this once. For 24 hours deliveries carry "
        "two `v1` signatures, one per secret, so the receiver can switch without losing "
        "events. Rotating again within those 24 hours ends the oldest secret's overlap.",
    )
    @idempotent_when_keyed(response_has_secret=True)
    def post(self, request: Request, public_id: str) -> Response:
        refuse_body_parameters(request)
        endpoint = selectors.webhook_endpoint_get(**_caller(request), public_id=public_id)
        secret = endpoints.webhook_endpoint_rotate_secret(endpoint=endpoint)
        return Response(
            WebhookEndpointWithSecretSerializer(endpoint, context={"secret": secret}).data
        )


class WebhookDeliveryListView(APIView):
    required_scopes = {"GET": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_deliveries_list",
        parameters=[PageQuerySerializer],
        responses={200: WebhookDeliveryListSerializer, **ERRORS},
        description="The endpoint's deliveries, newest first, each with its attempt log. A "
        "delivery is identified by its `event` id: pass the last one of a page as "
        "`starting_after`.",
    )
    def get(self, request: Request, public_id: str) -> Response:
        endpoint = selectors.webhook_endpoint_get(**_caller(request), public_id=public_id)
        query = PageQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        try:
            page = selectors.webhook_delivery_list(
                endpoint=endpoint,
                limit=query.validated_data["limit"],
                starting_after=query.validated_data.get("starting_after"),
            )
        except Http404:
            raise invalid_cursor("delivery (event id) for this endpoint")
        return list_response(page, WebhookDeliverySerializer)


# --- events -------------------------------------------------------------------------------------


class EventListQuerySerializer(PageQuerySerializer):
    type = StrictCharField(required=False, max_length=60, help_text="e.g. payment.created")
    subject = StrictCharField(
        required=False, max_length=64, help_text="What the events are about, e.g. a payment id."
    )
    created_gte = serializers.DateTimeField(required=False)
    created_lt = serializers.DateTimeField(required=False)
    delivery_success = QueryBooleanField(
        required=False,
        default=None,
        help_text="false: events still to deliver: a delivery pending, failed or given up, or "
        "no delivery although an enabled endpoint (existing when the event happened) wants its "
        "type. true: events with deliveries that all succeeded.",
    )


class EventListView(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="events_list",
        parameters=[EventListQuerySerializer],
        responses={200: EventListSerializer, **ERRORS},
        description="Your events, newest first, with their webhook deliveries: for "
        "reconciliation (`delivery_success=false` lists what your endpoints may have missed). "
        "Pass the last id of a page as `starting_after`.",
    )
    def get(self, request: Request) -> Response:
        query = EventListQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        params = query.validated_data
        filters = selectors.EventFilters(
            type=params.get("type"),
            subject=params.get("subject"),
            created_gte=params.get("created_gte"),
            created_lt=params.get("created_lt"),
            delivery_success=params.get("delivery_success"),
        )
        try:
            page = selectors.event_list(
                **_caller(request),
                filters=filters,
                limit=params["limit"],
                starting_after=params.get("starting_after"),
            )
        except Http404:
            raise invalid_cursor("event")
        return list_response(page, EventSerializer)


class EventDetailView(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(operation_id="events_retrieve", responses={200: EventSerializer, **ERRORS})
    def get(self, request: Request, public_id: str) -> Response:
        event = selectors.event_get(**_caller(request), public_id=public_id)
        return Response(EventSerializer(event).data)


class EventRedeliverView(APIView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="events_redeliver",
        request=EventRedeliverSerializer,
        responses={200: WebhookDeliveryListSerializer, **CONFLICT, **ERRORS},
        description="Attempt the event's delivery to `endpoint` again now (or every delivery of "
        "it to your enabled endpoints), whatever its status, and answer the deliveries after "
        "that attempt. A failed attempt goes back on the retry schedule. 409 `endpoint_disabled` "
        "for a disabled endpoint; 409 `no_delivery` when the event has no delivery to redeliver "
        "(not dispatched yet, or no endpoint wanted it when it happened).",
    )
    @idempotent_when_keyed()
    def post(self, request: Request, public_id: str) -> Response:
        event = selectors.event_get(**_caller(request), public_id=public_id)
        serializer = EventRedeliverSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint_id = serializer.validated_data.get("endpoint")
        if endpoint_id:
            endpoint = WebhookEndpoint.objects.filter(
                **_caller(request), public_id=endpoint_id
            ).first()
            if endpoint is None:
                raise serializers.ValidationError(
                    {
                        "endpoint": [
                            serializers.ErrorDetail(
                                "No such webhook endpoint.", code="resource_missing"
                            )
                        ]
                    }
                )
            if not endpoint.enabled:
                raise NothingToRedeliver(
                    "This endpoint is disabled; enable it first.",
                    code="endpoint_disabled",
                    param="endpoint",
                )
            deliveries = selectors.webhook_deliveries_of_event(event=event, endpoint=endpoint)
        else:
            deliveries = [
                delivery
                for delivery in selectors.webhook_deliveries_of_event(event=event)
                if delivery.endpoint.enabled
            ]
        if not deliveries:
            raise NothingToRedeliver(
                "This event has no delivery to redeliver"
                + (" to this endpoint" if endpoint_id else " to an enabled endpoint")
                + ": it has not been dispatched yet, or no endpoint wanted it when it happened.",
                code="no_delivery",
                param="endpoint" if endpoint_id else None,
            )
        redelivered = [webhook_redeliver(delivery=delivery) for delivery in deliveries]
        return Response(
            {
                "object": "list",
                "data": WebhookDeliverySerializer(redelivered, many=True).data,
                "has_more": False,
            }
        )
