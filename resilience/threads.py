"""Work handed to short-lived threads of our own (thread pools) gives its database connection back.

Django opens a connection per thread on first use and closes it only at the end of a request.
A pool thread that touched the database (a breaker reading its isolation ledger, say) and then
ended would keep its connection checked out of the process's connection pool forever; the pool
runs dry and every later query waits out the pool timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import connections

P = ParamSpec("P")
T = TypeVar("T")


def closing_connections(function: Callable[P, T]) -> Callable[P, T]:
    """``function`` run in a worker thread, closing that thread's database connections after."""

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return run
