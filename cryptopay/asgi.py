"""ASGI entry point: HTTP through Django, WebSockets through Channels (served by uvicorn, see
``manage.py serve``), behind the body limits of ``cryptopay.server.BodyLimitMiddleware``.

HTTP goes to Django's WSGI handler, run in a fixed pool of ``SERVER_THREADS`` threads
(``cryptopay.wsgi_bridge``), not to Django's ASGI handler. Every view, middleware and service
here is synchronous, and under the ASGI handler each request crossed between the event loop and
a thread about twenty times (one new thread per request, then a hop for each hook of every
middleware Django ran in async mode, and back around the sync-only ones): a one-row insert took
about 12 ms of CPU where the same request through the WSGI handler took 3 to 4.5 ms, and a worker served 58 of them per second instead of 136
(bench/api_capacity.py). Through the bridge a request runs whole in one pool thread, the event loop
only moving its bytes: the body is read on the loop before the thread starts (server.py), and the
response comes back as the thread's result.
"""

import os
from typing import Any, cast

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")

# Django must be set up before anything imports models.
django_wsgi_app = get_wsgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from cryptopay.heap import startup_heap_freeze  # noqa: E402
from cryptopay.server import BodyLimitMiddleware  # noqa: E402
from cryptopay.wsgi_bridge import WsgiBridge  # noqa: E402
from payments.consumers import websocket_urlpatterns  # noqa: E402


class BrowserOriginValidator(OriginValidator):
    """Refuses WebSockets opened by pages of other sites (cross-site WebSocket hijacking of an
    admin session). Browsers always send Origin; API clients (which authenticate with a key, not a
    cookie) send none, and are let through."""

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


def _allowed_origins() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


application = BodyLimitMiddleware(
    ProtocolTypeRouter(
        {
            # cast: django-stubs types the handler's answer as a response, which iterates bytes.
            "http": WsgiBridge(cast(Any, django_wsgi_app), threads=settings.SERVER_THREADS),
            "websocket": BrowserOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), _allowed_origins()
            ),
        }
    )
)

# Every view is imported now rather than by the first request, then the startup heap is frozen
# (cryptopay/heap.py): full garbage collections no longer walk it while requests wait.
get_resolver().url_patterns  # noqa: B018 (loading them imports every view)
startup_heap_freeze()
