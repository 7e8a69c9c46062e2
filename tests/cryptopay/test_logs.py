"""Log lines: one JSON object each, and no secret ever reaches them."""

from __future__ import annotations

import json
import logging

import pytest

from cryptopay.logs import REDACTED, CorrelationIdFilter, JsonFormatter, RedactSecretsFilter

API_KEY = "cpk_AbCd1234efGH_5678ijklMNOPqrstuvwx-yz"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw=="
METRICS_TOKEN = "Zm9vYmFyLXRva2Vu.abc-123_xyz"
NODE_PASSWORD = "n0de-pa55w0rd"


def emit(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> dict:
    record = logging.LogRecord("tests.logs", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    for name, value in extra.items():
        setattr(record, name, value)
    for log_filter in (RedactSecretsFilter(), CorrelationIdFilter()):
        assert log_filter.filter(record)
    return json.loads(JsonFormatter().format(record))


@pytest.mark.parametrize(
    ("message", "args", "secret"),
    [
        ("created key %s for %s", (API_KEY, "shop"), API_KEY),
        ("endpoint secret is %s", (WEBHOOK_SECRET,), WEBHOOK_SECRET),
        ("headers: %r", ({"Authorization": f"Bearer {METRICS_TOKEN}"},), METRICS_TOKEN),
        ("meta: %r", ({"HTTP_AUTHORIZATION": f"Bearer {API_KEY}"},), API_KEY),
        ("Authorization: Basic %s", ("dXNlcjpwYXNzd29yZA==",), "dXNlcjpwYXNzd29yZA=="),
        ("sent Bearer %s upstream", (METRICS_TOKEN,), METRICS_TOKEN),
        ("node %s failed", (f"http://rpcuser:{NODE_PASSWORD}@10.0.0.5:9332/",), NODE_PASSWORD),
        ("cookie=%s", ("sessionid=abcdef0123456789",), "abcdef0123456789"),
    ],
)
def test_given_a_secret_in_a_message_when_logged_then_only_its_redaction_appears(
    message, args, secret
):
    line = emit(message, *args)

    assert secret not in json.dumps(line)
    assert REDACTED in line["message"]


def test_given_a_secret_in_an_exception_and_extra_fields_when_logged_then_both_are_redacted():
    try:
        raise ValueError(f"bad key {API_KEY}")
    except ValueError as exc:
        line = emit(
            "failed",
            exc=exc,
            endpoint={"url": "https://shop.example/hook", "secret": WEBHOOK_SECRET},
            key=API_KEY,
        )

    text = json.dumps(line)
    assert API_KEY not in text
    assert WEBHOOK_SECRET not in text
    assert "ValueError: bad key cpk_AbCd1234efGH[REDACTED]" in line["exception"]
    assert line["endpoint"] == {"url": "https://shop.example/hook", "secret": f"whsec_{REDACTED}"}
    assert line["key"] == f"cpk_AbCd1234efGH{REDACTED}"


def test_given_ordinary_text_when_logged_then_it_is_left_alone():
    message = "payment pay_1 settled; authorization failed for key cpk_AbCd1234efGH; 5 of 5 ok"

    line = emit(message)

    assert line["message"] == message
    assert line["level"] == "WARNING"
    assert line["logger"] == "tests.logs"
    assert line["correlation_id"] == "-"
    assert line["time"].endswith("Z")


def test_given_the_configured_handler_when_a_logger_writes_then_the_filters_are_on_it(settings):
    handler = settings.LOGGING["handlers"]["console"]

    assert handler["filters"] == ["redact", "correlation", "repeats"]
    assert settings.LOGGING["filters"]["redact"]["()"] == "cryptopay.logs.RedactSecretsFilter"
    # Tests run in services mode: JSON lines.
    assert handler["formatter"] == "json"
    console = next(
        h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)
    )
    assert any(isinstance(f, RedactSecretsFilter) for f in console.filters)
