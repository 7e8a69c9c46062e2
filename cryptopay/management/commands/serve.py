"""Serve HTTP and WebSocket with uvicorn (cryptopay/server.py: body limits, header deadline); in
embedded mode also run the periodic schedule. The one web command of ``make run``, the Procfile,
docker-compose and the Dockerfile."""

from __future__ import annotations

import errno
import socket

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cryptopay.scheduler import EmbeddedScheduler
from cryptopay.server import uvicorn_options


class Command(BaseCommand):
    help = "Serve the gateway with uvicorn (and the beat schedule in-process in embedded mode)."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=settings.SERVER_WORKERS)

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        workers = options["workers"]
        _port_free(options["host"], options["port"])
        if settings.CELERY_TASK_ALWAYS_EAGER:
            # In-memory channel layer and schedule: a second process would see neither.
            workers = 1
            self.stdout.write(_live_rates_line())
            EmbeddedScheduler().start()
            self.stdout.write("embedded mode: periodic tasks run in this process")
        self.stdout.write(f"serving on http://{options['host']}:{options['port']}/", ending="\n")
        self.stdout.flush()
        uvicorn.run(
            "cryptopay.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=workers if workers > 1 else None,
            **uvicorn_options(),
        )


def _port_free(host: str, port: int) -> None:
    """Say so before anything else when the port is taken (uvicorn would only log it after
    "serving on")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} on {host} is already in use: stop what listens there, or "
                    f"choose another port (make run PORT={port + 1})"
                ) from None
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None


def _live_rates_line() -> str:
    from payments.rates.live import rate_providers_reachability

    fallback = (
        "payments are priced from the static fallback rates"
        if settings.RATES_ALLOW_STATIC_FALLBACK
        else "payments get 503 rate_unavailable until one answers"
    )
    reach = rate_providers_reachability()
    if not reach.reachable and not reach.unreachable:
        return f"live rates: no provider configured (CRYPTOPAY_RATE_PROVIDERS); {fallback}"
    if not reach.reachable:
        why = ", ".join(f"{name}: {reason}" for name, reason in reach.unreachable.items())
        return f"live rates: not reachable ({why}); {fallback}"
    line = f"live rates: reachable ({', '.join(reach.reachable)})"
    if reach.unreachable:
        line += f"; not reachable: {', '.join(reach.unreachable)}"
    return line
