"""The shipped Grafana dashboard and Prometheus alert rules are valid and name only metrics that a
real scrape of /metrics (the production server on loopback) exposes."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from testing.servers import Server, asgi_server

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "cryptopay.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = Path("/usr/bin/promtool")
METRIC = re.compile(r"\b((?:cryptopay|django)_[a-z_]+)")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exposed_names(exposition: str) -> set[str]:
    """Every series name the exposition declares: samples, and families without samples yet
    (a labelled counter before its first event) through their # TYPE line."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    with asgi_server(tmp_path) as server:
        yield server


def test_given_the_alert_rules_when_promtool_checks_them_then_they_are_valid():
    assert PROMTOOL.exists(), "make test installs Debian prometheus (make promtool)"

    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path):
    """The check above can fail: a rule with a syntax error is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("== 2", "== == 2", 1))

    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0


@pytest.mark.django_db(transaction=True)
def test_every_metric_in_the_dashboard_and_the_rules_is_in_a_real_scrape(server):
    scrape = httpx.get(f"{server.base_url}/metrics", timeout=10)
    exposed = exposed_names(scrape.text)
    named = {
        name
        for expr in dashboard_expressions() + rule_expressions()
        for name in METRIC.findall(expr)
    }

    assert scrape.status_code == 200
    assert len(named) >= 18
    assert sorted(named - exposed) == []


def test_the_dashboard_covers_the_families_operators_look_at():
    expressions = "\n".join(dashboard_expressions())

    for family in (
        "cryptopay_circuit_breaker_state", "cryptopay_rate_quotes_total",
        "cryptopay_idempotency_requests_total", "cryptopay_notifications_queue_size",
        "cryptopay_webhook_delivery_seconds_bucket", "cryptopay_websocket_connections",
        "cryptopay_chain_watcher_lag_blocks",
    ):  # fmt: skip
        assert family in expressions, family
