"""Serve HTTP and WebSocket with uvicorn (cryptopay/server.py: body limits, header deadline); in
embedded mode also run the periodic schedule. The one web command of ``make run``, the Procfile,
docker-compose and the Dockerfile."""

from __future__ import annotations

import errno
import os
import socket

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from uvicorn.supervisors import Multiprocess

from cryptopay.scheduler import EmbeddedScheduler
from cryptopay.server import WorkerSockets, uvicorn_options
from cryptopay.settings import database_pool_max


class Command(BaseCommand):
    help = "Serve the gateway with uvicorn (and the beat schedule in-process in embedded mode)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=settings.SERVER_WORKERS)

    def handle(self, *args, **options) -> None:
        workers = options["workers"]
        _port_free(options["host"], options["port"])
        if settings.CELERY_TASK_ALWAYS_EAGER:
            # In-memory channel layer and schedule: a second process would see neither.
            workers = 1
            self.stdout.write(_live_rates_line())
            EmbeddedScheduler().start()
            self.stdout.write("embedded mode: periodic tasks run in this process")
        # The workers size their database pools from the worker count (settings.py): a count
        # given here must reach them.
        os.environ["WEB_CONCURRENCY"] = str(workers)
        pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
        if isinstance(pool, dict) and workers != settings.SERVER_WORKERS:
            pool_max = database_pool_max(
                workers=workers,
                max_connections=settings.DATABASE_MAX_CONNECTIONS,
                reserved=settings.DATABASE_RESERVED_CONNECTIONS,
            )
            if "CRYPTOPAY_DB_POOL_MAX" not in os.environ:
                pool["max_size"] = pool_max
        if isinstance(pool, dict):
            budget = settings.DATABASE_MAX_CONNECTIONS - settings.DATABASE_RESERVED_CONNECTIONS
            if workers * pool["max_size"] > budget:
                self.stderr.write(
                    f"warning: {workers} workers x {pool['max_size']} database connections "
                    f"exceed the web workers' share of PostgreSQL's max_connections ({budget}); "
                    "lower CRYPTOPAY_DB_POOL_MAX or WEB_CONCURRENCY, or raise "
                    "CRYPTOPAY_DB_MAX_CONNECTIONS with the server's max_connections"
                )
        self.stdout.write(
            f"serving on http://{options['host']}:{options['port']}/ with {workers} worker(s)",
            ending="\n",
        )
        self.stdout.flush()
        if workers == 1:
            uvicorn.run(
                "cryptopay.asgi:application",
                host=options["host"],
                port=options["port"],
                **uvicorn_options(),
            )
            return
        # uvicorn.run's multi-worker mode, with a listening socket per worker (WorkerSockets).
        config = uvicorn.Config(
            "cryptopay.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=workers,
            **uvicorn_options(),
        )
        sockets = WorkerSockets(options["host"], options["port"])
        try:
            Multiprocess(config, sockets=sockets).run()
        except KeyboardInterrupt:
            pass  # as uvicorn.run: Ctrl-C is how one stops it
        finally:
            for sock in sockets:
                sock.close()


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
