"""Payment-side metrics sampled at scrape time (conventions: ``resilience.metrics``).

* ``cryptopay_rate_age_seconds{pair}``: age of the rate a quote for each pair in use would get
  now (shared cache, else this process's emergency copy); ``+Inf`` when there is none, so an
  alert on age fires also when rates never arrived. Pairs without a live provider are left out
  (they are priced from the static fallback rates, which have no age).
* ``cryptopay_chain_watcher_lag_blocks{chain}``: blocks between the node's tip and the last block
  the watcher processed, from the chain's cursor (``ChainCursor``), for each configured chain.
* ``cryptopay_chain_watcher_poll_age_seconds{chain}``: time since the watcher last polled that
  chain (``+Inf`` before its first poll): a stuck watcher shows here even when lag reads 0.

Quotes per level are counted where they are served: ``cryptopay_rate_quotes_total``
(``payments.rates.quotes``).
"""

from __future__ import annotations

import math

from django.conf import settings
from prometheus_client import Gauge

from payments.models import ChainCursor
from payments.rates.live import providers_for
from payments.rates.quotes import rate_cache
from payments.rates.refresh import rate_pairs_in_use
from resilience import clock
from resilience.metrics import register_sampler

RATE_AGE = Gauge(
    "cryptopay_rate_age_seconds",
    "Age of the newest rate available for a pair in use (+Inf: none).",
    ["pair"],
    multiprocess_mode="mostrecent",
)
WATCHER_LAG_BLOCKS = Gauge(
    "cryptopay_chain_watcher_lag_blocks",
    "Blocks the chain's watcher is behind the node's tip.",
    ["chain"],
    multiprocess_mode="mostrecent",
)
WATCHER_POLL_AGE = Gauge(
    "cryptopay_chain_watcher_poll_age_seconds",
    "Time since the chain's watcher last polled its node (+Inf: never).",
    ["chain"],
    multiprocess_mode="mostrecent",
)


def sample_rate_ages() -> None:
    cache = rate_cache()
    for pair in rate_pairs_in_use():
        if not providers_for(pair):
            continue
        answer = cache.peek(pair)
        RATE_AGE.labels(pair).set(math.inf if answer is None else answer.age)


def sample_watcher_lag() -> None:
    configured = list(settings.CHAINS)
    if not configured:
        return
    cursors = {cursor.chain: cursor for cursor in ChainCursor.objects.filter(chain__in=configured)}
    now = clock.now()
    for chain in configured:
        cursor = cursors.get(chain)
        if cursor is None or cursor.polled_at is None:
            WATCHER_POLL_AGE.labels(chain).set(math.inf)
            continue
        WATCHER_POLL_AGE.labels(chain).set(max(0.0, (now - cursor.polled_at).total_seconds()))
        if cursor.tip_height >= 0:
            WATCHER_LAG_BLOCKS.labels(chain).set(cursor.lag)


register_sampler("rate_ages", sample_rate_ages)
register_sampler("watcher_lag", sample_watcher_lag)
