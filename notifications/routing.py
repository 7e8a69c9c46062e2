"""WebSocket URL routes served by daphne through cryptopay.asgi.

The live payment and merchant streams are added by the WebSocket issue; until then the WebSocket
endpoint accepts no paths (Channels answers unknown paths by closing the handshake).
"""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
