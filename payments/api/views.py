"""Thin API views: parse and validate, call one service or selector, serialize."""

from __future__ import annotations

from django.http import Http404, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api_fields import StrictCharField, query_data, refuse_body_parameters
from accounts.auth import request_client
from accounts.models import ApiKeyScope
from accounts.openapi import ERRORS, ErrorSerializer
from accounts.pagination import invalid_cursor, list_response
from cryptopay.currencies import FIAT_EXPONENTS
from payments import selectors, services
from payments.addresses import AllocatedAddress
from payments.api.serializers import (
    PaymentCreateSerializer,
    PaymentListSerializer,
    PaymentSerializer,
    PaymentSimulateSerializer,
    RateSerializer,
    SimulatedTransactionSerializer,
)
from payments.currencies import CRYPTO_CURRENCIES, crypto
from payments.devchain import SimulationRefused, payment_simulate
from payments.errors import RateUnavailable, TestModeOnly
from payments.models import Payment
from payments.money import format_base_units
from payments.rates import Quote, rate_quote
from payments.states import PaymentStatus
from resilience.idempotency import REPLAYED_HEADER, cached_replay, idempotent, stored_replay

READ = ApiKeyScope.PAYMENTS_READ.value
WRITE = ApiKeyScope.PAYMENTS_WRITE.value


class PaymentListQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=10)
    starting_after = StrictCharField(required=False, max_length=32)
    status = serializers.ChoiceField(choices=PaymentStatus.choices, required=False)
    order_id = StrictCharField(required=False, max_length=200)
    created_gte = serializers.DateTimeField(required=False)
    created_lt = serializers.DateTimeField(required=False)


class PaymentListCreateView(APIView):
    required_scopes = {"GET": READ, "POST": WRITE}

    @extend_schema(
        operation_id="payments_list",
        parameters=[PaymentListQuerySerializer],
        responses={200: PaymentListSerializer, **ERRORS},
        description="Payments, newest first. Pass the last id of a page as `starting_after`.",
    )
    def get(self, request: Request) -> Response:
        query = PaymentListQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        params = query.validated_data
        filters = selectors.PaymentFilters(
            status=params.get("status"),
            order_id=params.get("order_id"),
            created_gte=params.get("created_gte"),
            created_lt=params.get("created_lt"),
        )
        try:
            page = selectors.payment_list(
                merchant=request_client(request).merchant,
                livemode=request_client(request).livemode,
                filters=filters,
                limit=params["limit"],
                starting_after=params.get("starting_after"),
            )
        except Http404:
            raise invalid_cursor("payment")
        return list_response(page, PaymentSerializer, request=request)

    @extend_schema(
        operation_id="payments_create",
        request=PaymentCreateSerializer,
        responses={
            201: PaymentSerializer,
            409: ErrorSerializer,
            422: ErrorSerializer,
            503: ErrorSerializer,
            **ERRORS,
        },
    )
    def post(self, request: Request) -> HttpResponse:
        # A replay whose answer is in the cache is answered before validation, pricing and the
        # address reservation, which it would not use. Whether its key's row holds one is asked
        # in the reservation's own statement, which then takes no address: a separate read here
        # cost every new create a tenth of its CPU, for the rare retry Redis does not answer.
        replay = cached_replay(request, ask_database=False)
        if replay is not None:
            return replay
        stored = stored_replay(request)
        # Priced before the idempotency gate: the provider fetch runs outside the request's
        # transaction and the key's lock (a replay does not use the quote). An invalid body is
        # not priced; the gate still judges it first (a reused key is a 422, not a 400).
        merchant = request_client(request).merchant
        serializer = PaymentCreateSerializer(
            data=request.data,
            context={"merchant": merchant, "livemode": request_client(request).livemode},
        )
        quotes: dict[str, Quote] = {}
        if not serializer.is_valid():
            return self._create(request, quotes=quotes, serializer=serializer)
        data = serializer.validated_data
        try:
            for code in data.get("accepted_currencies") or [data["crypto_currency"]]:
                quotes[code] = services.payment_price(
                    crypto_currency=code, fiat_currency=data["currency"]
                )
        except RateUnavailable:
            # Not even a fallback rate for the pair: a retry still gets its stored payment.
            replay = stored.replay() if stored is not None else None
            if replay is not None:
                return replay
            raise
        if data.get("accepted_currencies"):
            return self._create(request, quotes=quotes, serializer=serializer)
        # The address too is taken before the gate's transaction (see the reservation).
        with services.payment_address_reservation(
            merchant=merchant,
            crypto_currency=data["crypto_currency"],
            livemode=request_client(request).livemode,
            unless=stored.answered_sql() if stored is not None else None,
        ) as reservation:
            if reservation.answered:
                assert stored is not None
                replay = stored.replay()
                if replay is not None:
                    return replay
            response = self._create(
                request, quotes=quotes, serializer=serializer, address=reservation.address
            )
            if response.status_code == status.HTTP_201_CREATED and not response.has_header(
                REPLAYED_HEADER
            ):
                reservation.keep()  # this request's own payment, committed by the gate
        return response

    @idempotent()
    def _create(
        self,
        request: Request,
        *,
        quotes: dict[str, Quote],
        serializer: PaymentCreateSerializer | None = None,
        address: AllocatedAddress | None = None,
    ) -> Response:
        merchant = request_client(request).merchant
        if serializer is None:
            serializer = PaymentCreateSerializer(
                data=request.data,
                context={"merchant": merchant, "livemode": request_client(request).livemode},
            )
        serializer.is_valid(raise_exception=True)  # validated once: the result is kept
        data = serializer.validated_data
        common = {
            "merchant": merchant,
            "livemode": request_client(request).livemode,
            "fiat_amount": data["amount"],
            "fiat_currency": data["currency"],
            "order_id": data.get("order_id"),
            "description": data.get("description", ""),
            "metadata": data.get("metadata"),
            "redirect_url": data.get("redirect_url", ""),
            "cancel_url": data.get("cancel_url", ""),
        }
        if data.get("accepted_currencies"):
            payment = services.payment_create_with_choice(
                accepted_currencies=data["accepted_currencies"], quotes=quotes, **common
            )
        else:
            payment = services.payment_create(
                quote=quotes.get(data["crypto_currency"]),
                crypto_currency=data["crypto_currency"],
                address=address,
                **common,
            )
        return Response(
            PaymentSerializer(payment, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )


def _payment(request: Request, public_id: str) -> Payment:
    """The caller's payment in the caller's mode (the other mode's and other merchants' are 404)."""
    return selectors.payment_get(
        merchant=request_client(request).merchant,
        public_id=public_id,
        livemode=request_client(request).livemode,
    )


class PaymentDetailView(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(operation_id="payments_retrieve", responses={200: PaymentSerializer, **ERRORS})
    def get(self, request: Request, public_id: str) -> Response:
        payment = _payment(request, public_id)
        return Response(PaymentSerializer(payment, context={"request": request}).data)


class PaymentCancelView(APIView):
    required_scopes = {"POST": WRITE}

    @extend_schema(
        operation_id="payments_cancel",
        request=None,
        responses={200: PaymentSerializer, 409: ErrorSerializer, **ERRORS},
        description="Cancel a pending payment that has received nothing. Repeating it is a no-op.",
    )
    @idempotent()
    def post(self, request: Request, public_id: str) -> Response:
        refuse_body_parameters(request)
        payment = _payment(request, public_id)
        payment = services.payment_cancel(payment=payment)
        return Response(PaymentSerializer(payment, context={"request": request}).data)


class PaymentSimulateView(APIView):
    required_scopes = {"POST": WRITE}

    @extend_schema(
        operation_id="payments_simulate",
        request=PaymentSimulateSerializer,
        responses={200: SimulatedTransactionSerializer, 409: ErrorSerializer, **ERRORS},
        description="Test mode only (a `cpk_test_` key; a live key gets 403 `test_mode_only`): "
        "pay a test payment on the development chain, as a buyer's transaction seen by a "
        "watcher would. `amount` in whole coins or `amount_base_units` (default: what is still "
        "due), `confirmations` (default: what the payment requires); with `txid`, give an "
        "earlier simulated transaction new confirmations instead. The payment moves, and its "
        "events and webhooks go out, exactly as for a real payment.",
    )
    def post(self, request: Request, public_id: str) -> Response:
        if request_client(request).livemode:
            # Before the idempotency gate: a live key's refusal is never stored as an answer.
            raise TestModeOnly(
                "Simulating a payment is for test mode: use a test key (cpk_test_…). Live "
                "payments are paid on their chain."
            )
        return self._simulate(request, public_id=public_id)

    @idempotent()
    def _simulate(self, request: Request, *, public_id: str) -> Response:
        payment = _payment(request, public_id)
        if not payment.crypto_currency:  # a coin-choice payment whose buyer has not picked yet
            raise SimulationRefused("The buyer has not picked a coin yet (no address to pay).")
        serializer = PaymentSimulateSerializer(data=request.data, context={"payment": payment})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        output = payment_simulate(
            payment=payment,
            amount=data.get("amount_base_units"),
            confirmations=data.get("confirmations"),
            txid=data.get("txid"),
        )
        payment.refresh_from_db()
        simulated = {
            "txid": output.txid,
            "amount": format_base_units(
                amount=output.amount, currency=crypto(payment.crypto_currency)
            ),
            "amount_base_units": str(output.amount),
            "confirmations": output.confirmations,
            "payment": payment,
        }
        return Response(
            SimulatedTransactionSerializer(simulated, context={"request": request}).data
        )


class RateQuerySerializer(serializers.Serializer):
    crypto = serializers.ChoiceField(choices=sorted(CRYPTO_CURRENCIES))
    fiat = serializers.ChoiceField(
        choices=sorted(FIAT_EXPONENTS),
        required=False,
        help_text="ISO 4217 code; defaults to the merchant's default fiat currency.",
    )


class RateView(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="rates_retrieve",
        parameters=[RateQuerySerializer],
        responses={200: RateSerializer, 503: ErrorSerializer, **ERRORS},
        description=(
            "The current quote for a pair with its provenance: the level it came from (live, "
            "cache, emergency, fallback), the providers asked and their raw prices, and its age."
        ),
    )
    def get(self, request: Request) -> Response:
        query = RateQuerySerializer(data=query_data(request))
        query.is_valid(raise_exception=True)
        fiat = (
            query.validated_data.get("fiat")
            or request_client(request).merchant.default_fiat_currency
        )
        quote = rate_quote(crypto_currency=query.validated_data["crypto"], fiat_currency=fiat)
        return Response({"object": "rate", **quote.provenance()})
