"""Payments created through the API from an OS process of its own, driven by test_concurrency.py.

    python -m tests.payments.api_create_client <api key> <count> <tag>

Sets Django up, prints ``{"ready": true}``, waits for a line on stdin (so both processes start
together), then POSTs ``count`` payments in LTC through the whole in-process stack (middleware,
authentication, the idempotency gate), each with its own Idempotency-Key; every third request
repeats the order_id of the one before it (a 409 after its address was reserved). Prints
``{"answers": [[status, payment id or null], ...]}``.
"""

from __future__ import annotations

import json
import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")
    django.setup()
    from rest_framework.test import APIClient

    secret, count, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = APIClient(HTTP_HOST="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    answers = []
    for i in range(count):
        order = i - 1 if i % 3 == 2 else i
        response = client.post(
            "/api/v1/payments",
            {"amount": "10.00", "crypto_currency": "LTC", "order_id": f"{tag}-{order}"},
            format="json",
            headers={"Idempotency-Key": f"{tag}-{i}"},
        )
        answers.append([response.status_code, response.json().get("id")])
    print(json.dumps({"answers": answers}), flush=True)


if __name__ == "__main__":
    main()
