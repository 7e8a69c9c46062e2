"""Log records as JSON lines, stamped with the correlation id, with secrets redacted.

Wired in ``settings.LOGGING`` on the one console handler, so they apply to every logger (Django,
Celery, daphne, ours); Celery workers use the same configuration (``cryptopay.celery`` answers
``setup_logging``). ``CRYPTOPAY_LOG_FORMAT=plain`` keeps the filters and prints one readable line.

One line per record::

    {"time": "2026-01-01T12:00:00.123Z", "level": "INFO", "logger": "payments.services",
     "message": "...", "correlation_id": "3f2c...", "process": 4711,
     "task_id": "...", "task": "...", "exception": "Traceback ..."}

plus any ``extra={...}`` fields. ``task_id``/``task`` appear inside Celery tasks only.

Redaction (``RedactSecretsFilter``) rewrites the message, its arguments, extra string fields and
the formatted traceback before any handler sees them: merchant API keys (``cpk_…``, ``cpk_test_…``
past the prefix the admin shows), webhook
signing secrets (``whsec_…``), the value of ``Authorization``/``Cookie``/``X-Api-Key`` headers and
bearer tokens anywhere, passwords in URLs (``http://user:secret@node``) and ``token=`` values of
query strings (the buyer's checkout token).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptopay.correlation import correlation_id, log_context

REDACTED = "[REDACTED]"

# (pattern, replacement); applied in order.
SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A header and its whole value, as text ("Authorization: Bearer x") or in a dict repr
    # ("'HTTP_AUTHORIZATION': 'Bearer x'").
    (
        re.compile(
            r"""(?i)((?:authorization|cookie|x-api-key|api[_-]key)["']?\s*[:=]\s*["']?)"""
            r"""[^"'\r\n,}]+"""
        ),
        rf"\g<1>{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<1>\g<2>{REDACTED}"),
    # An API key keeps its stored prefix (shown in the admin, not a secret), loses the rest; a
    # bare prefix (what the code logs to name a key) is left alone.
    (re.compile(r"\b(cpk_(?:test_)?[A-Za-z0-9]{12})[A-Za-z0-9_-]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9_+/=-]+"), f"whsec_{REDACTED}"),
    # URL userinfo: keep the user, drop the password.
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), rf"\g<1>{REDACTED}@"),
    # A token in a query string: the buyer's checkout token (?token=) rides in every checkout URL,
    # so in access lines and in the request Django attaches to its 4xx/5xx records.
    (re.compile(r"(?i)\b([a-z_]*token=)(?!\[REDACTED\])[^&\s\"'#<>]+"), rf"\g<1>{REDACTED}"),
)

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "correlation_id",
    "task_id",
    "task",
}


def redact(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict | list | tuple):
        return json.loads(redact(json.dumps(value, default=str)))
    if value is None or isinstance(value, bool | int | float):
        return value
    # Any other object is written as its str() (JsonFormatter's default=str): Django's
    # ``extra={"request": request}`` repr holds the full path, query string included.
    return redact(str(value))


class RedactSecretsFilter(logging.Filter):
    """Removes secrets from a record; never drops one."""

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, as logging would
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD:
                setattr(record, name, _redact_value(value))
        return True


class CorrelationIdFilter(logging.Filter):
    """Stamps ``correlation_id`` (``-`` outside a request or task), ``task_id`` and ``task``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id() or "-"
        context = log_context()
        record.task_id = context.get("task_id", "")
        record.task = context.get("task", "")
        return True


class RepeatedWarningFilter(logging.Filter):
    """Writes a warning (or error) repeated word for word within ``window`` seconds once; the
    first repeat after the window is written with how many were dropped ("… (12 identical lines
    suppressed since it was last written)"). A state change logs a different line, so it always shows:
    one line per provider per state change, plus a summary. ``window`` 0 writes every line.
    ``clock`` (monotonic seconds) is injectable for tests."""

    MAX_TRACKED = 1000  # distinct lines remembered; the oldest is forgotten first

    def __init__(self, window: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = float(window)
        self.clock = clock
        self._seen: OrderedDict[tuple[str, int, str], list[float | int]] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window <= 0 or record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, message)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            suppressed = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.MAX_TRACKED:
                self._seen.popitem(last=False)
        if suppressed:
            record.msg = (
                f"{message} ({suppressed} identical line{'s' if suppressed > 1 else ''} "
                "suppressed since it was last written)"
            )
            record.args = ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
            "process": record.process,
        }
        task_id = getattr(record, "task_id", "")
        if task_id:
            line["task_id"] = task_id
            line["task"] = getattr(record, "task", "")
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in line:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)
