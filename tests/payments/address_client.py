"""Deposit addresses allocated from an OS process of its own, driven by test_concurrency.py.

    python -m tests.payments.address_client <merchant pk> <count>

Sets Django up, prints ``{"ready": true}``, waits for a line on stdin (so both processes start
together), then allocates ``count`` addresses for the merchant in LTC, each in a transaction of
its own, and prints ``{"indexes": [...]}``.
"""

from __future__ import annotations

import json
import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")
    django.setup()
    from django.db import transaction

    from accounts.models import Merchant
    from payments.addresses import address_allocate

    merchant = Merchant.objects.get(pk=int(sys.argv[1]))
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    indexes = []
    for _ in range(int(sys.argv[2])):
        with transaction.atomic():
            indexes.append(address_allocate(merchant=merchant, crypto_currency="LTC").index)
    print(json.dumps({"indexes": indexes}), flush=True)


if __name__ == "__main__":
    main()
