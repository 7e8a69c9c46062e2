"""Security headers: a Content-Security-Policy on every page, inline scripts
and styles only with the request's nonce; Referrer-Policy and Permissions-Policy; the proxy's
X-Forwarded-Proto believed only with a trusted proxy configured; and docker-compose's defaults
pass ``manage.py check --deploy --fail-level WARNING``. (That the pages still work under the
policy: tests/payments/test_checkout_browser.py, the checkout in Chromium.)"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.test import Client

from tests.factories import make_payment, staff_client

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
INLINE = re.compile(r"<(script|style)\b([^>]*)>", re.IGNORECASE)


def directives(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


def assert_inline_code_needs_the_nonce(response) -> None:  # type: ignore[no-untyped-def]
    policy = directives(response)
    nonce = re.search(r"'nonce-([^']+)'", policy["script-src"]).group(1)
    assert "'unsafe-inline'" not in policy["script-src"] + policy["style-src"]
    assert f"'nonce-{nonce}'" in policy["style-src"]
    for tag, attributes in INLINE.findall(response.content.decode()):
        if tag.lower() == "script" and ("src=" in attributes or "application/json" in attributes):
            continue  # a file of ours, or data the browser does not run
        assert f'nonce="{nonce}"' in attributes, f"<{tag}{attributes}> runs without the nonce"


def test_given_the_checkout_page_when_served_then_csp_with_nonce_and_no_referrer():
    payment = make_payment()

    response = Client().get(f"/pay/{payment.public_id}/?token={payment.checkout_token}")

    assert response.status_code == 200
    assert_inline_code_needs_the_nonce(response)
    policy = directives(response)
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert policy["connect-src"] == "'self' ws://testserver"  # its live status WebSocket
    assert response["Referrer-Policy"] == "no-referrer"
    assert "camera=()" in response["Permissions-Policy"]


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/payments/payment/", "/admin/resilience/", "/admin/auth/user/add/"]
)
def test_given_the_admin_when_a_staff_member_opens_it_then_every_inline_script_or_style_has_the_nonce(
    path, django_user_model
):
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", None))

    response = client.get(path)

    assert response.status_code == 200
    assert_inline_code_needs_the_nonce(response)
    assert response["Referrer-Policy"] == "same-origin"
    assert "geolocation=()" in response["Permissions-Policy"]


def test_given_two_requests_when_served_then_their_nonces_differ():
    first, second = Client().get("/admin/login/"), Client().get("/admin/login/")

    assert directives(first)["script-src"] != directives(second)["script-src"]


def test_given_the_api_docs_when_served_then_scripts_stay_self_only():
    response = Client().get("/api/docs/")

    policy = directives(response)
    assert response.status_code == 200
    assert "'unsafe-inline'" not in policy["script-src"]
    assert policy["worker-src"] == "'self' blob:"  # Redoc's search worker
    assert "<script>" not in response.content.decode()  # no inline script to need 'unsafe-inline'


def test_given_the_staff_health_page_when_served_then_it_has_a_policy_too():
    response = staff_client().get("/health", HTTP_ACCEPT="text/html")

    assert "'unsafe-inline'" not in directives(response)["script-src"]


def settings_in(env: dict[str, str], expression: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import django; django.setup(); from django.conf import settings; print({expression})",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def compose_environment() -> dict[str, str]:
    """docker-compose's app environment with its own defaults (``${VAR:-default}``), a strong
    SECRET_KEY for the one it requires, and nothing of this test run's environment."""
    app = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-app"]["environment"]
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "cryptopay.settings"}
    for name, value in app.items():
        given = re.fullmatch(r"\$\{(\w+):([-?])(.*)\}", str(value))
        if given and given.group(2) == "?":
            env[name] = secrets.token_urlsafe(50)
        else:
            env[name] = given.group(3) if given else str(value)
    return env


def test_given_compose_defaults_when_check_deploy_runs_then_no_warning():
    env = compose_environment()

    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert env["DEBUG"] == "0" and env["SECURE_SSL_REDIRECT"] == "1"


def test_given_no_trusted_proxy_when_settings_load_then_x_forwarded_proto_is_not_believed():
    env = compose_environment()

    assert settings_in(env, "settings.SECURE_PROXY_SSL_HEADER") == "None"
    with_proxy = {**env, "CRYPTOPAY_TRUSTED_PROXIES": "10.0.0.2"}
    assert settings_in(with_proxy, "settings.SECURE_PROXY_SSL_HEADER") == (
        "('HTTP_X_FORWARDED_PROTO', 'https')"
    )


def test_given_no_trusted_proxy_when_a_client_claims_https_then_it_is_still_redirected(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = None  # what no CRYPTOPAY_TRUSTED_PROXIES gives

    response = Client(HTTP_X_FORWARDED_PROTO="https").get("/admin/login/")

    assert response.status_code == 301 and response["Location"].startswith("https://")
