"""A process that uses one breaker, for tests/cryptopay/test_dashboard.py: it makes one call of a
healthy dependency through the shared breaker and prints what happened as one JSON line.

    python -m tests.cryptopay.dashboard_breaker_process <redis url> <prefix> <name>
"""

from __future__ import annotations

import json
import sys

from resilience.breaker import (
    BreakerOptions,
    BrokenCircuitError,
    CircuitBreaker,
    IsolatedCircuitError,
    SharedStore,
)
from resilience.redis_client import fast_fail_client


def main() -> None:
    url, prefix, name = sys.argv[1:4]
    breaker = CircuitBreaker(
        name, BreakerOptions(), store=SharedStore(fast_fail_client(url), prefix)
    )
    try:
        breaker.call(lambda: None)
        result = "ok"
    except IsolatedCircuitError:
        result = "isolated"
    except BrokenCircuitError:
        result = "rejected"
    print(json.dumps({"result": result, "state": breaker.state.value}), flush=True)


if __name__ == "__main__":
    main()
