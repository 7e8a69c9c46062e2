"""A burst of concurrent POSTs from its own OS process, driven by test_idempotency_concurrency.py.

    python -m tests.resilience.idempotency_client <base url> <api secret> <key> <count> <body>

Opens ``count`` httpx clients, each with its keep-alive connection already established (one
after the other: the test server's listen backlog is only 10), starts one thread per client,
prints ``{"ready": true}``, waits for a line on stdin (so the parent releases every process
together), sends the requests, then prints one JSON line ``{"answers": [...]}`` with each
answer's status, the headers the test judges and the body as base64 (byte for byte).
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import threading
from contextlib import closing

import httpx


def answer_of(response: httpx.Response) -> dict:
    return {
        "status": response.status_code,
        "replayed": response.headers.get("Idempotent-Replayed"),
        "retry_after": response.headers.get("Retry-After"),
        "body": base64.b64encode(response.content).decode(),
    }


def main() -> None:
    url, secret, key, count, body = sys.argv[1:6]
    count_ = int(count)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    tls = ssl.create_default_context()  # one for all: httpx would build one per client
    clients = []
    for _ in range(count_):
        client = httpx.Client(base_url=url, timeout=30, headers=headers, verify=tls)
        client.get("/api/v1/payments", params={"limit": 1}).raise_for_status()
        clients.append(client)
    go = threading.Event()
    answers: list[dict] = [{}] * count_

    def send(i: int) -> None:
        with closing(clients[i]) as client:
            go.wait()
            try:
                response = client.post(
                    "/api/v1/payments", content=body, headers={"Idempotency-Key": key}
                )
                answers[i] = answer_of(response)
            except httpx.HTTPError as exc:  # reported to the parent, which fails on it
                answers[i] = {"error": repr(exc)}

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count_)]
    for thread in threads:
        thread.start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    go.set()
    for thread in threads:
        thread.join(timeout=60)
    print(json.dumps({"answers": answers}), flush=True)


if __name__ == "__main__":
    main()
