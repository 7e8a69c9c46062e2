"""The WebSocket consumers and their routes: who may read which live stream, a buyer their
payment's, a merchant (or staff) a merchant's. Served by daphne through ``cryptopay.asgi``.

The streaming itself (cap, heartbeat, replay, close codes) is ``notifications.streams``.
"""

from __future__ import annotations

import asyncio
import contextlib

from django.conf import settings
from django.http import HttpRequest
from django.urls import path
from django.utils.crypto import constant_time_compare
from rest_framework import exceptions
from rest_framework.request import Request

from accounts.auth import ApiKeyAuthentication
from accounts.models import ApiKeyScope, Merchant
from notifications.streams import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHENTICATED,
    EventStreamConsumer,
    Stream,
    StreamAccess,
    StreamDenied,
    owner_group,
)
from payments.models import Payment


class PaymentStreamConsumer(EventStreamConsumer):
    """``/ws/payments/<id>/?token=<checkout token>``: one payment's events, for its buyer.

    With CHECKOUT_STREAM_POLL_INTERVAL set (embedded mode, whose in-memory channel layer does not
    reach other processes) the connection also reads its payment's new events from the database
    at that interval, so a change made by another process shows within it."""

    stream_kind = "payment"
    follower: asyncio.Task | None = None

    async def connect(self) -> None:
        await super().connect()
        interval = settings.CHECKOUT_STREAM_POLL_INTERVAL.total_seconds()
        if self.access is not None and interval > 0:
            self.follower = asyncio.create_task(self._follow(interval))

    async def disconnect(self, code: int) -> None:
        if self.follower is not None:
            self.follower.cancel()
            self.follower = None
        await super().disconnect(code)

    async def _follow(self, interval: float) -> None:
        while self.access is not None:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # the database is busy: the next round
                async with self.turn:
                    await self._catch_up()

    def authorize(self) -> StreamAccess:
        token = self.query_param("token")
        if not token:
            raise StreamDenied(CLOSE_UNAUTHENTICATED, "unauthenticated: checkout token required")
        payment_id = self.scope["url_route"]["kwargs"]["payment_id"]
        payment = Payment.objects.select_related("merchant").filter(public_id=payment_id).first()
        # The same answer for an unknown payment and a wrong token: ids are not confirmed.
        if payment is None or not constant_time_compare(payment.checkout_token, token):
            raise StreamDenied(CLOSE_FORBIDDEN, "forbidden: no such payment for this token")
        return StreamAccess(
            # A checkout link is one buyer: the cap bounds the tabs (or scripts) it can hold open.
            user=f"payment:{payment.public_id}",
            stream=Stream(
                name=f"payment:{payment.public_id}",
                group=f"payment.{payment.public_id}",
                owner=payment.merchant.public_id,
                subject=payment.public_id,
                refetch_url=f"/pay/{payment.public_id}/status",
                livemode=payment.livemode,
            ),
        )


class MerchantStreamConsumer(EventStreamConsumer):
    """``/ws/merchant/``: every event of a merchant in one mode.

    With ``Authorization: Bearer <api key>`` (a key with ``payments:read``) it is the key's
    merchant, in the key's mode (a test key follows test events); with an admin session (staff
    holding STAFF_PERMISSION) it is the merchant named by ``?merchant=mer_…``, live unless
    ``&livemode=false``.
    """

    # What the stream shows is events, which the admin shows only to holders of this permission.
    STAFF_PERMISSION = "notifications.view_event"

    stream_kind = "merchant"

    def authorize(self) -> StreamAccess:
        if self.header(b"authorization"):
            merchant, user, livemode = self._by_api_key()
        else:
            merchant, user = self._by_session()
            livemode = self.query_param("livemode") != "false"
        return StreamAccess(
            user=user,
            stream=Stream(
                name=f"merchant:{merchant.public_id}" + ("" if livemode else ":test"),
                group=owner_group(merchant.public_id, livemode=livemode),
                owner=merchant.public_id,
                refetch_url="/api/v1/events",
                livemode=livemode,
            ),
        )

    def _by_api_key(self) -> tuple[Merchant, str, bool]:
        request = HttpRequest()
        request.META["HTTP_AUTHORIZATION"] = self.header(b"authorization") or ""
        client_address = self.scope.get("client") or ("", 0)
        request.META["REMOTE_ADDR"] = client_address[0] or ""
        # The throttle's client address behind CRYPTOPAY_TRUSTED_PROXIES, as for HTTP requests.
        request.META["HTTP_X_FORWARDED_FOR"] = self.header(b"x-forwarded-for") or ""
        try:
            result = ApiKeyAuthentication().authenticate(Request(request))
        except exceptions.APIException as failed:
            raise StreamDenied(
                CLOSE_UNAUTHENTICATED, f"unauthenticated: {failed.detail}"
            ) from failed
        if result is None:
            raise StreamDenied(CLOSE_UNAUTHENTICATED, "unauthenticated: use a Bearer API key")
        client, _ = result
        if not client.has_scope(ApiKeyScope.PAYMENTS_READ):
            raise StreamDenied(CLOSE_FORBIDDEN, "forbidden: the key lacks payments:read")
        # The merchant is the account: its keys share one cap.
        return client.merchant, f"merchant:{client.merchant.public_id}", client.livemode

    def _by_session(self) -> tuple[Merchant, str]:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            raise StreamDenied(
                CLOSE_UNAUTHENTICATED, "unauthenticated: sign in to the admin or use an API key"
            )
        if not (user.is_active and user.is_staff):
            raise StreamDenied(CLOSE_FORBIDDEN, "forbidden: staff only")
        if not user.has_perm(self.STAFF_PERMISSION):
            raise StreamDenied(CLOSE_FORBIDDEN, f"forbidden: needs {self.STAFF_PERMISSION}")
        merchant_id = self.query_param("merchant") or ""
        merchant = Merchant.objects.filter(public_id=merchant_id).first()
        if merchant is None:
            raise StreamDenied(CLOSE_FORBIDDEN, "forbidden: name an existing ?merchant=mer_…")
        return merchant, f"user:{user.pk}"


websocket_urlpatterns = [
    path("ws/payments/<slug:payment_id>/", PaymentStreamConsumer.as_asgi()),
    path("ws/merchant/", MerchantStreamConsumer.as_asgi()),
]
