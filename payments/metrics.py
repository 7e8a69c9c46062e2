"""Payment-side metrics sampled at scrape time (conventions: ``resilience.metrics``), from the
same selectors as the admin dashboard (``payments.freshness``).

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

from prometheus_client import Gauge

from payments.freshness import rate_age_list, watcher_lag_list
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


# The samplers read through the dashboard's selectors (payments.dashboard).
def sample_rate_ages() -> None:
    for rate in rate_age_list():
        if rate.providers:  # static-only pairs have no age
            RATE_AGE.labels(rate.pair).set(
                math.inf if rate.age_seconds is None else rate.age_seconds
            )


def sample_watcher_lag() -> None:
    for lag in watcher_lag_list():
        poll_age = lag.poll_age_seconds
        WATCHER_POLL_AGE.labels(lag.chain).set(math.inf if poll_age is None else poll_age)
        if lag.lag_blocks is not None and poll_age is not None:
            WATCHER_LAG_BLOCKS.labels(lag.chain).set(lag.lag_blocks)


register_sampler("rate_ages", sample_rate_ages)
register_sampler("watcher_lag", sample_watcher_lag)
