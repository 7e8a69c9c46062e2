"""`make run` from a clean checkout: one command, no services, and a payment is taken end to end.

The checkout is copied (tracked files plus untracked, not-ignored ones) to a temporary directory so
the embedded state (.local/: SQLite database, secret key) starts empty, and the environment carries
none of the variables that would switch to services mode.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from testing.nodes import free_port

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
VENV_PYTHON = VENV / "bin" / "python"
STARTUP_SECONDS = 60
# Anything that would select services mode, or point the state elsewhere than the copy's .local/.
SERVICE_VARS = {
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECURE_SSL_REDIRECT",
    "CRYPTOPAY_REDIS_PREFIX",
    "DJANGO_SETTINGS_MODULE",
    "CRYPTOPAY_STATE_DIR",
    "CRYPTOPAY_DEV_CHAIN",
    # A `make test` parent must not leak its flags into the inner make.
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
}
API_KEY_LINE = re.compile(r"^\s+API key\s+(cpk_\S+)\s*$", re.MULTILINE)


def clean_copy(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for raw in filter(None, listed.split(b"\0")):
        relative = os.fsdecode(raw)
        source = REPO / relative
        if not source.is_file():  # tracked but deleted in the working tree
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination


def embedded_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        # Other CRYPTOPAY_* tunables pass through (the test run's "no real exchange" among them).
        if name not in SERVICE_VARS
    }


def stop_group(process: subprocess.Popen) -> None:
    """Stop make and everything it started (the server), and wait until they are all gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            process.poll()  # reap make itself
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    process.wait(timeout=15)


class Gateway:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"make run exited with {self.process.returncode}:\n{self.output()}")
            try:
                httpx.get(f"{self.base_url}/api/v1/payments", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        pytest.fail(f"server did not answer within {STARTUP_SECONDS} s:\n{self.output()}")

    def api_key(self) -> str:
        keys = API_KEY_LINE.findall(self.output())
        assert len(keys) == 1, f"expected one API key line in:\n{self.output()}"
        return keys[0]


def start_make_run(checkout: Path, log: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["make", "run", f"VENV={VENV}", f"PORT={port}"],
            cwd=checkout,
            env={**embedded_env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def make_run(checkout: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    port = free_port()
    process = start_make_run(checkout, log, port, env or {})
    try:
        gateway = Gateway(process, port, log)
        gateway.wait_until_serving()
        yield gateway
    finally:
        stop_group(process)


def test_given_a_clean_checkout_when_make_run_then_a_payment_is_created_paid_and_settled(
    tmp_path,
):
    checkout = clean_copy(tmp_path / "checkout")
    assert not (checkout / ".local").exists()

    with make_run(checkout, tmp_path / "first.log") as gateway:
        assert "embedded mode" in gateway.output()
        api_key = gateway.api_key()
        assert re.fullmatch(r"cpk_[A-Za-z0-9]{44}", api_key)
        auth = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=gateway.base_url, headers=auth, timeout=10) as http:
            created = http.post(
                "/api/v1/payments", json={"amount": "25.00", "crypto_currency": "BTC"}
            )
            assert created.status_code == 201, created.text
            payment = created.json()
            assert payment["status"] == "pending"
            assert payment["amount"] == "25.00"
            assert payment["deposit_address"].startswith("devbtc1")

            paid = subprocess.run(
                [str(VENV_PYTHON), "manage.py", "simulate_payment", payment["id"]],
                cwd=checkout,
                env=embedded_env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert paid.returncode == 0, paid.stdout + paid.stderr

            fetched = http.get(f"/api/v1/payments/{payment['id']}")
            assert fetched.status_code == 200, fetched.text
            assert fetched.json()["status"] == "settled"
            assert fetched.json()["amount_due"] == "0.00000000"
        # The key is what lets the request in.
        assert httpx.get(f"{gateway.base_url}/api/v1/payments", timeout=10).status_code == 401

    # Embedded state lives in the checkout's .local/, nowhere else.
    assert (checkout / ".local" / "cryptopay.sqlite3").is_file()
    assert (checkout / ".local" / "secret_key").is_file()

    with make_run(checkout, tmp_path / "second.log") as gateway:
        assert gateway.api_key() == api_key
        again = httpx.get(
            f"{gateway.base_url}/api/v1/payments/{payment['id']}", headers=auth, timeout=10
        )
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "settled"


def sample(metrics: str, family: str, breaker: str) -> float:
    """A breaker's value in a /metrics exposition (0 when the series was never created)."""
    match = re.search(rf'^{family}{{breaker="{re.escape(breaker)}"}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    return free_port()


def test_given_unreachable_exchanges_when_make_run_then_it_says_so_and_payments_skip_them_quietly(
    tmp_path,
):
    # Offline as on a laptop without network: one exchange refuses, one does not resolve.
    offline = {
        "CRYPTOPAY_RATE_PROVIDERS": "kraken,coinbase",
        "CRYPTOPAY_RATE_KRAKEN_URL": f"http://127.0.0.1:{closed_port()}",
        "CRYPTOPAY_RATE_COINBASE_URL": "http://coinbase.invalid",
    }
    checkout = clean_copy(tmp_path / "checkout")

    with make_run(checkout, tmp_path / "offline.log", env=offline) as gateway:
        api_key = gateway.api_key()
        auth = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=gateway.base_url, headers=auth, timeout=30) as http:
            created = [
                http.post("/api/v1/payments", json={"amount": "25.00", "crypto_currency": "BTC"})
                for _ in range(3)
            ]
        metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
        output = gateway.output()

    banner, _, served = output.partition("serving on ")
    assert served, output
    assert (
        "live rates: not reachable (kraken: connection refused, coinbase: name does not "
        "resolve); payments are priced from the static fallback rates"
    ) in banner
    assert f"curl -H 'Authorization: Bearer {api_key}'" in banner
    assert f"{gateway.base_url}/api/docs/" in banner
    assert [c.status_code for c in created] == [201, 201, 201], [c.text for c in created]
    assert {c.json()["quote"]["source"] for c in created} == {"fallback"}
    # Skipped, not tried: no failed call after the start probe, one line per breaker change,
    # and the "no live rate" warning once for three payments.
    for name in ("kraken", "coinbase"):
        assert sample(metrics, "cryptopay_circuit_breaker_failures_total", f"rates:{name}") == 0
        assert sample(metrics, "cryptopay_circuit_breaker_rejections_total", f"rates:{name}") >= 3
        assert output.count(f"circuit rates:{name}: closed -> open") == 1, output
    assert output.count("no live rate for BTC-USD") == 1, output


def test_given_the_port_is_taken_when_make_run_then_it_says_so_before_serving(tmp_path):
    checkout = clean_copy(tmp_path / "checkout")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_make_run(checkout, tmp_path / "taken.log", port, {})
        try:
            process.wait(timeout=STARTUP_SECONDS)
        finally:
            stop_group(process)
    output = (tmp_path / "taken.log").read_text(errors="replace")

    assert process.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert "serving on" not in output
