"""A Django process holding one database session, for tests/resilience/test_database_recovery.py.

    python -m tests.resilience.database_session sleep <seconds>   # one long statement
    python -m tests.resilience.database_session abandon <lock id> # a transaction left idle

Prints one JSON line per step. ``abandon`` takes a transaction-scoped advisory lock, says so, then
leaves its transaction open until stdin closes (a thread stuck on something else).
"""

from __future__ import annotations

import json
import sys

import django


def main() -> None:
    django.setup()
    from django.db import DatabaseError, connection, transaction

    mode, value = sys.argv[1:3]
    try:
        if mode == "sleep":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [float(value)])
            print(json.dumps({"finished": True}), flush=True)
        elif mode == "abandon":
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int(value)])
                print(json.dumps({"locked": True}), flush=True)
                sys.stdin.read()
                cursor.execute("SELECT 1")
            print(json.dumps({"finished": True}), flush=True)
    except DatabaseError as exc:
        print(json.dumps({"error": exc.__class__.__name__, "message": str(exc)[:200]}), flush=True)


if __name__ == "__main__":
    main()
