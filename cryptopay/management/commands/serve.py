"""Serve HTTP and WebSocket with daphne; in embedded mode also run the periodic schedule."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from cryptopay.scheduler import EmbeddedScheduler


class Command(BaseCommand):
    help = "Serve the gateway with daphne (and the beat schedule in-process in embedded mode)."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        from daphne.cli import CommandLineInterface

        if settings.CELERY_TASK_ALWAYS_EAGER:
            EmbeddedScheduler().start()
            self.stdout.write("embedded mode: periodic tasks run in this process")
        self.stdout.write(f"serving on http://{options['host']}:{options['port']}/", ending="\n")
        self.stdout.flush()
        CommandLineInterface().run(
            ["-b", options["host"], "-p", str(options["port"]), "cryptopay.asgi:application"]
        )
