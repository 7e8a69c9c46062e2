"""ASGI entry point: HTTP through Django, WebSockets through Channels (served by uvicorn, see
``manage.py serve``), behind the body limits of ``cryptopay.server.BodyLimitMiddleware``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from cryptopay.server import BodyLimitMiddleware  # noqa: E402
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
            "http": django_asgi_app,
            "websocket": BrowserOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), _allowed_origins()
            ),
        }
    )
)
