"""Watch one chain in the foreground: the same poll Celery beat runs, in a loop.

manage.py watch_chain litecoin            # poll every CHAIN_POLL_INTERVAL until Ctrl-C
manage.py watch_chain ethereum --once     # one poll, then exit
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from payments.chains.config import chains
from payments.chains.watch import chain_watch


class Command(BaseCommand):
    help = "Follow a configured chain's nodes and record payments, printing each poll."

    def add_arguments(self, parser) -> None:
        parser.add_argument("chain")
        parser.add_argument("--once", action="store_true", help="Poll once and exit.")
        parser.add_argument("--interval", type=float, help="Seconds between polls.")

    def handle(self, *args, **options) -> None:
        name = options["chain"]
        if name not in chains():
            known = ", ".join(chains()) or "none (set CRYPTOPAY_CHAINS)"
            raise CommandError(f"Unknown chain {name!r}; configured: {known}.")
        interval = options["interval"] or settings.CHAIN_POLL_INTERVAL.total_seconds()
        while True:
            result = chain_watch(chain_name=name)
            if result is None:
                self.stdout.write(f"{name}: another watcher holds the chain; waiting")
            else:
                self.stdout.write(
                    f"{name}: height {result.to_height}/{result.tip} (lag {result.lag}) via "
                    f"{result.node}: {result.recorded} recorded, {result.dropped} dropped"
                    + (
                        f", reorg after {result.reorged_from}"
                        if result.reorged_from is not None
                        else ""
                    )
                )
            if options["once"]:
                return
            time.sleep(interval)
