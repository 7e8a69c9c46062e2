"""The startup heap of a long-running process, kept out of the cyclic garbage collector's way.

Once Django is set up, a web worker holds a few hundred thousand objects that
live as long as the process: modules, classes, settings, the URL patterns and their views. The
collector walked all of them in every full collection: a request that triggered one stalled for
tens of milliseconds, which is where the served API's one-client p99 went (bench/api_throughput.py),
and the walk cost a web worker about a tenth of a millisecond per create on average. ``gc.freeze``
moves every object alive at that moment to a generation the collector never visits; collecting
first keeps the startup's own garbage out of it (a cycle frozen is never freed).

Not in the dispatcher: it holds tens of thousands of claims and events in memory during a burst,
and with the startup heap frozen the collector's full-collection rule (a quarter more long-lived
objects than the last full collection left) fires far more often on them; its deliveries/s fell
4-8 % in bench/notifications.py.
"""

from __future__ import annotations

import gc


def startup_heap_freeze() -> int:
    """Collect the garbage of startup, then freeze what is left; how many objects are frozen.
    Call it once the process has imported what it serves with, before it serves."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
