"""Serve HTTP and WebSocket with uvicorn (cryptopay/server.py: body limits, header deadline); in
embedded mode also run the periodic schedule. The one web command of ``make run``, the Procfile,
docker-compose and the Dockerfile."""

from __future__ import annotations

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from cryptopay.scheduler import EmbeddedScheduler
from cryptopay.server import uvicorn_options


class Command(BaseCommand):
    help = "Serve the gateway with uvicorn (and the beat schedule in-process in embedded mode)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=settings.SERVER_WORKERS)

    def handle(self, *args, **options) -> None:
        workers = options["workers"]
        if settings.CELERY_TASK_ALWAYS_EAGER:
            # In-memory channel layer and schedule: a second process would see neither.
            workers = 1
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
