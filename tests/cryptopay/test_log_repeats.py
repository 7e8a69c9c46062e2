"""Repeated identical warnings are written once per window, then summarised (the embedded
default; cryptopay.logs.RepeatedWarningFilter), with an injectable clock instead of waiting."""

from __future__ import annotations

import logging

from cryptopay.logs import RepeatedWarningFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(message: str, *args: object, level: int = logging.WARNING, name: str = "rates"):  # type: ignore[no-untyped-def]
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def written(log_filter: RepeatedWarningFilter, *records: logging.LogRecord) -> list[str]:
    return [r.getMessage() for r in records if log_filter.filter(r)]


def test_given_the_same_warning_within_the_window_then_it_is_written_once():
    clock = Clock()
    log_filter = RepeatedWarningFilter(window=300, clock=clock)

    lines = []
    for _ in range(15):
        lines += written(log_filter, record("no live rate for %s: %s", "BTC-USD", "kraken down"))
        clock.now += 30

    assert lines == [
        "no live rate for BTC-USD: kraken down",
        "no live rate for BTC-USD: kraken down (9 identical lines suppressed since it was last "
        "written)",
    ]


def test_a_different_line_such_as_a_state_change_is_always_written():
    log_filter = RepeatedWarningFilter(window=300, clock=Clock())

    lines = written(
        log_filter,
        record("circuit rates:kraken: closed -> open"),
        record("circuit rates:kraken: closed -> open"),
        record("circuit rates:kraken: open -> half_open"),
        record("circuit rates:coinbase: closed -> open"),
        record("circuit rates:kraken: closed -> open", name="other.logger"),
    )

    assert lines == [
        "circuit rates:kraken: closed -> open",
        "circuit rates:kraken: open -> half_open",
        "circuit rates:coinbase: closed -> open",
        "circuit rates:kraken: closed -> open",
    ]


def test_info_lines_and_a_zero_window_are_never_suppressed():
    clock = Clock()
    quiet = RepeatedWarningFilter(window=300, clock=clock)
    off = RepeatedWarningFilter(window=0, clock=clock)

    info = [record("refreshed BTC-USD", level=logging.INFO) for _ in range(3)]
    warnings = [record("kraken down") for _ in range(3)]

    assert len(written(quiet, *info)) == 3
    assert len(written(off, *warnings)) == 3


def test_the_embedded_default_is_five_minutes_and_services_write_every_line(settings):
    from cryptopay import settings as project_settings

    expected = 300 if project_settings.EMBEDDED else 0
    assert project_settings.LOG_REPEAT_WINDOW.total_seconds() == expected
    handler_filters = project_settings.LOGGING["handlers"]["console"]["filters"]
    assert handler_filters.index("repeats") > handler_filters.index(
        "redact"
    )  # compares redacted text
