"""One rate quote from its own OS process, driven by test_rates_processes.py.

    python -m tests.payments.rate_client <crypto> <fiat>

Sets Django up, prints ``{"ready": true}``, waits for a line on stdin (so the test decides when
it asks), then prints ``{"source": ..., "rate": ...}`` for the quote it got.
"""

from __future__ import annotations

import json
import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")
    django.setup()
    from payments.rates.quotes import rate_quote

    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    quote = rate_quote(crypto_currency=sys.argv[1], fiat_currency=sys.argv[2])
    print(json.dumps({"source": quote.source, "rate": str(quote.value)}), flush=True)


if __name__ == "__main__":
    main()
