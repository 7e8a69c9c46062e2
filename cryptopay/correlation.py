"""Correlation ids: one id per request, in every log line it causes, here and downstream.

* HTTP: ``X-Request-ID`` is taken from the request when it is a plausible id (1 to 128 of
  ``A-Z a-z 0-9 - _ . : + / =``, so UUIDs, nginx's ``$request_id``, Heroku's and AWS's ids pass),
  otherwise a new one is made; it is returned in the response and bound to the request's context
  (``CorrelationIdMiddleware``, first in ``MIDDLEWARE``).
* Celery: ``before_task_publish`` copies the bound id into the task's headers; ``task_prerun``
  binds it in the worker (a task enqueued by no one, e.g. by beat, gets a fresh one) together
  with the task's id and name, ``task_postrun`` restores what was bound before (eager tasks run
  inside the request that enqueued them).
* WebSockets: a consumer binds ``correlation_id_from_scope(scope)`` (the handshake's
  ``X-Request-ID``, or a fresh id) for its lifetime::

      async def __call__(self, scope, receive, send):
          with bound_correlation_id(correlation_id_from_scope(scope)):
              await super().__call__(scope, receive, send)

  Everything the consumer awaits, its ``database_sync_to_async`` calls and the tasks it enqueues
  then carry the id.

Why stdlib ``contextvars`` and ``logging`` rather than django-structlog or asgi-correlation-id:
every existing module logs through stdlib loggers, and a filter on the one handler stamps the id
on all of them (Django's, Celery's, ours) without changing a call site; asgi-correlation-id sits
in front of the ASGI app only (the WSGI test client, management commands and Celery's eager mode
would bypass it) and validates UUIDs only; django-structlog neither validates the header nor
returns it, and would bring a second logging API. The parts that need care (validation,
propagation through Celery, restoring the outer id after an eager task) are the same few lines
either way.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from celery.signals import before_task_publish, task_postrun, task_prerun
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
META_KEY = "HTTP_X_REQUEST_ID"
# The Celery message header that carries the id (headers of protocol 2 become request attributes).
TASK_HEADER = "x_request_id"
MAX_LENGTH = 128
_VALID = re.compile(rf"[A-Za-z0-9._:+/=-]{{1,{MAX_LENGTH}}}")

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
# Extra fields bound with the id (the Celery task's id and name), for the log formatter.
_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "log_context", default=None
)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def valid_correlation_id(value: str | None) -> str | None:
    """``value`` if it is an acceptable id, else None."""
    if value is None:
        return None
    value = value.strip()
    return value if _VALID.fullmatch(value) else None


def correlation_id() -> str | None:
    """The id bound to the current context, if any."""
    return _correlation_id.get()


def log_context() -> Mapping[str, str]:
    return _context.get() or {}


@contextmanager
def bound_correlation_id(value: str | None = None, **fields: str) -> Iterator[str]:
    """Bind ``value`` (or a fresh id) and ``fields`` for the block; restores the outer ones."""
    bound = valid_correlation_id(value) or new_correlation_id()
    id_token = _correlation_id.set(bound)
    context_token = _context.set(dict(fields))
    try:
        yield bound
    finally:
        _context.reset(context_token)
        _correlation_id.reset(id_token)


def correlation_id_from_scope(scope: Mapping[str, Any]) -> str:
    """The id of an ASGI connection (a WebSocket handshake): its ``X-Request-ID`` if valid,
    else a fresh one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"x-request-id":
            found = valid_correlation_id(value.decode("latin-1"))
            if found:
                return found
    return new_correlation_id()


# --- HTTP ---------------------------------------------------------------------------------------


class CorrelationIdMiddleware:
    """Binds the request's id for everything the request does and returns it in the response.

    The id stays bound until the response is finished (``request_finished``), so Django's own
    "Not Found: ..." or 5xx lines, logged after the middleware returned, still carry it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def _bind(self, request: HttpRequest) -> str:
        value = valid_correlation_id(request.META.get(META_KEY)) or new_correlation_id()
        request.correlation_id = value  # type: ignore[attr-defined]  # the stub's HttpRequest has no per-request attributes
        _correlation_id.set(value)
        _context.set({})
        return value

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self._async:
            return self.__acall__(request)
        value = self._bind(request)
        response = self.get_response(request)
        response[HEADER] = value
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        value = self._bind(request)
        response = await self.get_response(request)
        response[HEADER] = value
        return response


@receiver(request_finished, dispatch_uid="cryptopay.correlation.request_finished")
def _unbind_after_request(**kwargs: Any) -> None:
    _correlation_id.set(None)
    _context.set({})


# --- Celery -------------------------------------------------------------------------------------

# task id -> the tokens to restore when it finishes (several when tasks nest eagerly).
_task_tokens: dict[str, list[tuple[contextvars.Token, contextvars.Token]]] = {}


@before_task_publish.connect(dispatch_uid="cryptopay.correlation.before_task_publish")
def _add_to_task_headers(headers: dict | None = None, **kwargs: Any) -> None:
    value = correlation_id()
    if value and headers is not None and TASK_HEADER not in headers:
        headers[TASK_HEADER] = value


@task_prerun.connect(dispatch_uid="cryptopay.correlation.task_prerun")
def _bind_for_task(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    request = getattr(task, "request", None)
    given = getattr(request, TASK_HEADER, None) if request is not None else None
    if given is None and request is not None and isinstance(request.headers, dict):
        given = request.headers.get(TASK_HEADER)
    value = valid_correlation_id(given) or correlation_id() or new_correlation_id()
    tokens = (
        _correlation_id.set(value),
        _context.set({"task_id": str(task_id or ""), "task": getattr(task, "name", "") or ""}),
    )
    _task_tokens.setdefault(str(task_id), []).append(tokens)


@task_postrun.connect(dispatch_uid="cryptopay.correlation.task_postrun")
def _unbind_after_task(task_id: str | None = None, **kwargs: Any) -> None:
    stack = _task_tokens.get(str(task_id))
    if not stack:
        return
    id_token, context_token = stack.pop()
    if not stack:
        del _task_tokens[str(task_id)]
    try:
        _context.reset(context_token)
        _correlation_id.reset(id_token)
    except ValueError:  # set in another context (a thread pool): nothing of ours to restore
        _context.set({})
        _correlation_id.set(None)
