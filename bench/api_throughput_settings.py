"""Bench-only settings for bench/api_throughput.py: the production settings with one route added.

Never used by the gateway itself: the bench's server processes get
``DJANGO_SETTINGS_MODULE=bench.api_throughput_settings`` from the project root. Everything
(middleware, authentication, database, Redis, logging) is ``cryptopay.settings``; only the URLconf
differs, and it serves every production route unchanged (see api_throughput_urls.py).

``BENCH_CONN_MAX_AGE`` (set by ``api_throughput.py --conn-max-age N`` only) overrides the database
connections' CONN_MAX_AGE: a declared deviation from production, for measuring a candidate fix.
"""

import os

from cryptopay.settings import *  # noqa: F403
from cryptopay.settings import DATABASES

ROOT_URLCONF = "bench.api_throughput_urls"

if os.environ.get("BENCH_CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["BENCH_CONN_MAX_AGE"])
