"""Operator control of circuit breakers, shared by every process through Redis.

manage.py breakers                   # state of the breakers this process knows of
manage.py breakers isolate NAME      # hold NAME open everywhere until closed
manage.py breakers close NAME        # close NAME everywhere and reset its statistics
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from resilience.breaker import breakers


class Command(BaseCommand):
    help = "Show, isolate or close circuit breakers (e.g. rates:kraken)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "action", nargs="?", choices=["show", "isolate", "close"], default="show"
        )
        parser.add_argument("names", nargs="*", help="Breaker names, e.g. rates:kraken.")

    def handle(self, *args, **options) -> None:
        names = options["names"]
        for name in names:
            breaker = breakers.get(name)
            if options["action"] == "isolate":
                breaker.isolate()
            elif options["action"] == "close":
                breaker.close()
        for breaker in breakers.all():
            snap = breaker.snapshot()
            retry = (
                ""
                if snap["retry_after"] in (None, 0)
                else f" retry after {snap['retry_after']:.0f} s"
            )
            self.stdout.write(
                f"{snap['name']:24} {snap['state']:10}{retry} "
                f"({snap['failures']} failures in {snap['throughput']} calls, "
                f"{'shared' if snap['shared'] else 'local only'})"
            )
        if not names and not breakers.all():
            self.stdout.write("No breaker used in this process yet; name one to inspect it.")
