"""API key authentication (``Authorization: Bearer <key>``) and per-view scope checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.http import HttpRequest
from django.urls import Resolver404, resolve
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts import api_key_cache, auth_throttle
from accounts.models import ApiKey, Merchant
from accounts.services import api_key_matches, api_key_split
from cryptopay.compiled_query import CompiledQuery, Row
from resilience import clock
from resilience.idempotency import request_cache_read

# last_used_at is a hint for operators, not an audit log: write it at most once a minute per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# When this process last wrote each key's last_used_at (by key id): a remembered row keeps the
# value it was read with.
_last_used_written: dict[int, datetime] = {}

# Every authenticated request needs this row: its SQL is compiled once, and the row is remembered
# (accounts/api_key_cache.py says when the memory may answer instead of the database).
_API_KEY_BY_PREFIX = CompiledQuery(
    lambda prefix: ApiKey.objects.select_related("merchant").filter(prefix=prefix),
    prefix="cpk_compiled_example",
)


@dataclass(frozen=True)
class ApiClient:
    """The authenticated caller of an API request: a merchant acting through one of its keys."""

    merchant: Merchant
    api_key: ApiKey

    is_authenticated = True

    def has_scope(self, scope: str) -> bool:
        return scope in self.api_key.scopes

    @property
    def livemode(self) -> bool:
        """False for a test key: it creates and sees test objects only."""
        return self.api_key.livemode

    @property
    def owner(self) -> str:
        """Whose notifications (events, webhook endpoints) these are: the merchant's public id.
        Notification reads and writes also take ``livemode``: each mode sees its own."""
        return self.merchant.public_id

    @property
    def idempotency_scope(self) -> str:
        """Idempotency keys belong to the merchant in one mode, whichever of its keys sent them:
        a key (or an ``order_id``) tried with a test key never replays into live mode."""
        return self.merchant.public_id if self.livemode else f"{self.merchant.public_id}:test"


@dataclass(frozen=True)
class _Settled:
    """A request's authentication, decided once: the idempotency middleware authenticates a
    request that carries a key before the view does, and the view's DRF authentication must not
    ask Redis and the database again, nor count a refused key twice."""

    result: tuple[ApiClient, ApiKey] | None
    refusal: exceptions.APIException | None = None

    def outcome(self) -> tuple[ApiClient, ApiKey] | None:
        if self.refusal is not None:
            raise self.refusal
        return self.result


# Where a Django request carries its _Settled authentication.
_SETTLED = "_api_key_authentication"


class ApiKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        django_request = getattr(request, "_request", request)
        settled = django_request.__dict__.get(_SETTLED)
        if isinstance(settled, _Settled):
            return settled.outcome()
        try:
            result = self._authenticate(request, django_request)
        except (exceptions.AuthenticationFailed, exceptions.Throttled) as refusal:
            setattr(django_request, _SETTLED, _Settled(result=None, refusal=refusal))
            raise
        setattr(django_request, _SETTLED, _Settled(result=result))
        return result

    def _authenticate(
        self, request: Request, django_request: HttpRequest
    ) -> tuple[ApiClient, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        prefix = self._presented_prefix(header)
        # A key this process authenticated before names its owner: the read of this request's
        # stored idempotent answer then shares the throttle check's round trip, as does the read
        # of the epoch that says whether the remembered row may answer for the database. The
        # gate uses the answer only if the key, authenticated below, has that owner.
        known = api_key_cache.remembered(prefix)
        read = (
            None
            if known is None
            else request_cache_read(django_request, owner=known.idempotency_scope)
        )
        extra = [] if read is None else [read.redis_key]
        wait, values = auth_throttle.retry_after_reading(
            django_request, prefix, [*extra, api_key_cache.epoch_key()]
        )
        # Only this key's own failures hold it back: another key's never refuse a valid one.
        if wait is not None:
            raise exceptions.Throttled(
                wait=wait, detail="Too many failed attempts with this API key from this address."
            )
        epoch = None if values is None else values[-1]
        if read is not None and values is not None:
            read.deliver(values[0])
        try:
            return self._check(
                header,
                remembered=api_key_cache.trusted(known, epoch=epoch),
                epoch=epoch,
                redis_read=values is not None,
            )
        except exceptions.AuthenticationFailed:
            auth_throttle.record_failure(django_request, prefix)
            wait = auth_throttle.ip_retry_after(django_request)
            if wait is not None:
                raise exceptions.Throttled(
                    wait=wait, detail="Too many failed API key attempts from this address."
                ) from None
            raise

    def _presented_prefix(self, header: list[bytes]) -> str:
        """The key prefix the request presents ("" when it presents no well-formed key)."""
        if header[0].lower() != self.keyword or len(header) != 2:
            return ""
        try:
            return api_key_split(header[1].decode("ascii")) or ""
        except UnicodeDecodeError:
            return ""

    def _check(
        self,
        header: list[bytes],
        *,
        remembered: Row[ApiKey] | None,
        epoch: bytes | str | None,
        redis_read: bool,
    ) -> tuple[ApiClient, ApiKey]:
        """``remembered``: the key's row, if this process's memory may answer for it; ``epoch``:
        the token read from Redis before anything else (``redis_read``: whether it could be)."""
        if header[0].lower() != self.keyword or len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Use 'Authorization: Bearer <api key>'.", code="invalid_authorization_header"
            )
        try:
            raw_key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        prefix = api_key_split(raw_key)
        api_key = None if remembered is None else remembered.instance()
        if prefix and (api_key is None or not api_key_matches(api_key=api_key, raw_key=raw_key)):
            # Not remembered (or not trusted), or not this secret: the database decides.
            api_key = _api_key_read(prefix, epoch=epoch, remember=redis_read)
        if api_key is None or not api_key_matches(api_key=api_key, raw_key=raw_key):
            raise exceptions.AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed(
                "This API key has been revoked.", code="api_key_revoked"
            )
        now = clock.now()
        last_used = max(
            (at for at in (api_key.last_used_at, _last_used_written.get(api_key.pk)) if at),
            default=None,
        )
        if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
            if len(_last_used_written) >= api_key_cache.MAX_REMEMBERED:
                _last_used_written.clear()
            _last_used_written[api_key.pk] = now
        return ApiClient(merchant=api_key.merchant, api_key=api_key), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def _api_key_read(prefix: str, *, epoch: bytes | str | None, remember: bool) -> ApiKey | None:
    """The key with this prefix from the database (its merchant with it), remembered under the
    epoch this request read before asking."""
    row = _API_KEY_BY_PREFIX.row(prefix=prefix)
    if row is None:
        return None
    api_key = row.instance()
    if remember:
        client = ApiClient(merchant=api_key.merchant, api_key=api_key)
        api_key_cache.remember(
            prefix, row=row, epoch=epoch, idempotency_scope=client.idempotency_scope
        )
    return api_key


def idempotency_owner(request: HttpRequest) -> str | None:
    """The merchant behind a plain Django request's Bearer key (for the idempotency middleware).
    The outcome stays on the request: the view's authentication reuses it."""
    client = _authenticated_client(request)
    return None if client is None else client.idempotency_scope


def _authenticated_client(request: HttpRequest) -> ApiClient | None:
    try:
        result = ApiKeyAuthentication().authenticate(Request(request))
    except (exceptions.AuthenticationFailed, exceptions.Throttled):
        return None
    return None if result is None else result[0]


def idempotent_replay_permitted(request: HttpRequest) -> bool:
    """May this request's stored answer be replayed before its view runs (for the idempotency
    middleware)? Only where the view would have let the same caller in: the route is an API
    view authenticated by API key, guarded by ``HasApiKeyScope`` alone and not throttled, and
    the key has the scope it requires for the method. Anything else goes on to the view, which
    decides (403, 404, 405...)."""
    client = _authenticated_client(request)
    if client is None:
        return False
    try:
        match = resolve(request.path_info, urlconf=getattr(request, "urlconf", None))
    except Resolver404:
        return False
    view_class = getattr(match.func, "view_class", None)
    if (
        view_class is None
        or list(getattr(view_class, "authentication_classes", ())) != [ApiKeyAuthentication]
        or list(getattr(view_class, "permission_classes", ())) != [HasApiKeyScope]
        or getattr(view_class, "throttle_classes", None)
    ):
        return False
    required = getattr(view_class, "required_scopes", {}).get(request.method)
    return required is not None and client.has_scope(required)


def request_client(request: Request) -> ApiClient:
    """The API client of a request that passed ``HasApiKeyScope`` (typed, unlike ``request.user``)."""
    client = request.user
    if not isinstance(client, ApiClient):
        raise exceptions.NotAuthenticated("Authentication required: send a Bearer API key.")
    return client


class HasApiKeyScope(BasePermission):
    """Views declare ``required_scopes = {"GET": "payments:read", ...}`` per method."""

    def has_permission(self, request, view) -> bool:
        client = request_client(request)
        required = getattr(view, "required_scopes", {}).get(request.method)
        if required is None:
            return True
        if not client.has_scope(required):
            raise exceptions.PermissionDenied(
                f"This API key lacks the '{required}' scope.", code="insufficient_scope"
            )
        return True


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes the Bearer API key in the OpenAPI schema."""

    target_class = "accounts.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A merchant API key: live (cpk_…) or test (cpk_test_…).",
        }
