"""Secrets in log lines: a handler on the root logger that renders every record exactly as each of
the application's own handlers would write it (their filters, among them the redaction, and
their formatter) and keeps the lines that still hold a full API key, a webhook secret or a
checkout token.

``tests/conftest.py`` attaches one for the whole test run and fails the run at its end if any
line held a secret; ``tests/security/test_log_secrets.py`` runs a realistic flow under it.
"""

from __future__ import annotations

import logging
import re

# A whole API key (the 12-character prefix alone names a key and is no secret), a signing secret,
# or a buyer's checkout token (32 base62 characters) in a query string.
SECRET = re.compile(
    r"\bcpk_(?:test_)?[A-Za-z0-9]{44}\b|\bwhsec_[A-Za-z0-9_+/=-]{16,}|(?i:token=)[A-Za-z0-9]{32}\b"
)


def app_handlers() -> list[logging.Handler]:
    """The root logger's handlers from settings.LOGGING (not pytest's capture handlers)."""
    return [
        handler
        for handler in logging.getLogger().handlers
        if not type(handler).__module__.startswith("_pytest")
        and not isinstance(handler, SecretScanner)
    ]


class SecretScanner(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        for handler in app_handlers():
            copy = logging.makeLogRecord(record.__dict__)
            if record.levelno < handler.level or not handler.filter(copy):
                continue
            line = handler.format(copy)
            if SECRET.search(line):
                self.leaks.append(f"{record.name}: {line[:300]}")

    def __enter__(self) -> SecretScanner:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
