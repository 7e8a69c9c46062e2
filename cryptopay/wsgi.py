"""WSGI entry point, for tools that want one; the gateway itself is served by daphne (asgi.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")

application = get_wsgi_application()
