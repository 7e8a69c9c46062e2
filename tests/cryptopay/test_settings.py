"""Settings: production passes the deploy checks, misconfiguration fails loudly, and each mode
(embedded, services) really wires the backends it promises.

Settings are read once per process, so every mode other than the test run's own is checked in a
subprocess with its own environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection
from django.utils import timezone

from payments import tasks
from payments.models import Payment, PaymentEvent
from payments.states import PaymentStatus
from tests.factories import make_payment

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# What picks the mode and the production switches; stripped so a subprocess sees only what a
# test gives it.
MODE_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECURE_SSL_REDIRECT",
    "CRYPTOPAY_REDIS_PREFIX",
)
# Tunables that change what the mode defaults would be; other CRYPTOPAY_* settings pass through.
MODE_TUNABLES = ("CRYPTOPAY_STATE_DIR", "CRYPTOPAY_DEV_CHAIN")
SECURITY_VARS = (
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
)

PROBE = """
import json

import django

django.setup()

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import caches

from cryptopay.celery import app


def qualified(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "cache": qualified(caches["default"]),
    "channel_layer": qualified(get_channel_layer()),
    "always_eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "celery_app_always_eager": app.conf.task_always_eager,
    "dev_chain": settings.DEV_CHAIN_ENABLED,
    "debug": settings.DEBUG,
    "secret_key": settings.SECRET_KEY,
}))
"""


def subprocess_env(*, drop: tuple[str, ...] = MODE_VARS, **given: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in drop and name not in MODE_TUNABLES
    }
    env["DJANGO_SETTINGS_MODULE"] = "cryptopay.settings"
    env.update(given)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def probe_settings(env: dict[str, str], probe: str = PROBE) -> Any:
    result = subprocess.run(
        [PYTHON, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def production_env(**given: str) -> dict[str, str]:
    return subprocess_env(
        drop=MODE_VARS + SECURITY_VARS,
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="pay.example.com",
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        **given,
    )


def require_services_mode() -> None:
    """The in-process tests below are about services mode; say so plainly when it is not."""
    assert settings.DATABASES["default"]["ENGINE"] == "resilience.postgresql", (
        "this test process runs in embedded mode (SQLite); services-mode tests need "
        "DATABASE_URL/REDIS_URL/SECRET_KEY set before Django reads its settings"
    )
    assert not settings.CELERY_TASK_ALWAYS_EAGER, "Celery runs eagerly: not services mode"


# --- a) production settings ---------------------------------------------------------------------


def test_given_production_environment_when_check_deploy_runs_then_it_reports_no_warning():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_given_ssl_redirect_switched_off_when_check_deploy_runs_then_it_fails_on_that_warning():
    # The check above could only pass vacuously if the deploy checks did not run at all.
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=production_env(SECURE_SSL_REDIRECT="0"),
    )

    assert result.returncode != 0
    assert "security.W008" in result.stderr


# --- b) SECRET_KEY is required in production ----------------------------------------------------


@pytest.mark.parametrize("mode", ["services", "embedded"])
def test_given_debug_off_and_no_secret_key_when_settings_load_then_they_fail_naming_it(
    mode, tmp_path
):
    services = (
        {"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]}
        if mode == "services"
        else {}
    )
    env = {**subprocess_env(DEBUG="0", CRYPTOPAY_STATE_DIR=str(tmp_path)), **services}

    result = manage("check", env=env)

    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
    # No key was quietly generated instead.
    assert not (tmp_path / "secret_key").exists()


# --- c) embedded mode ---------------------------------------------------------------------------


def test_given_no_service_urls_when_settings_load_then_everything_runs_in_process(tmp_path):
    config = probe_settings(subprocess_env(CRYPTOPAY_STATE_DIR=str(tmp_path)))

    assert config["engine"] == "django.db.backends.sqlite3"
    assert config["db_name"] == str(tmp_path / "cryptopay.sqlite3")
    assert config["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert config["channel_layer"] == "channels.layers.InMemoryChannelLayer"
    assert config["always_eager"] is True
    assert config["celery_app_always_eager"] is True
    assert config["dev_chain"] is True
    assert config["debug"] is True


def test_given_embedded_mode_when_settings_load_twice_then_the_generated_secret_key_is_kept(
    tmp_path,
):
    env = subprocess_env(CRYPTOPAY_STATE_DIR=str(tmp_path))

    first = probe_settings(env)["secret_key"]
    second = probe_settings(env)["secret_key"]

    key_file = tmp_path / "secret_key"
    assert first == second == key_file.read_text().strip()
    assert len(first) >= 50
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("only", ["DATABASE_URL", "REDIS_URL"])
def test_given_only_one_service_url_when_settings_load_then_they_fail_asking_for_both(
    only, tmp_path
):
    env = {**subprocess_env(CRYPTOPAY_STATE_DIR=str(tmp_path)), only: os.environ[only]}

    result = manage("check", env=env)

    assert result.returncode != 0
    assert "Set both DATABASE_URL and REDIS_URL" in result.stderr


# --- d) services mode, in this process ----------------------------------------------------------


def test_given_services_mode_when_a_value_is_cached_then_it_round_trips_through_redis():
    require_services_mode()
    from django.core.cache import caches
    from django_redis import get_redis_connection
    from django_redis.cache import RedisCache

    cache = caches["default"]
    assert isinstance(cache, RedisCache)
    key = f"test-settings-{uuid.uuid4().hex}"
    raw = get_redis_connection("default")
    try:
        cache.set(key, {"amount": "25.00"}, timeout=60)

        assert cache.get(key) == {"amount": "25.00"}
        assert raw.exists(cache.make_key(key)) == 1  # really stored in Redis
    finally:
        cache.delete(key)
    assert raw.exists(cache.make_key(key)) == 0


def test_given_services_mode_when_a_message_is_sent_to_a_new_channel_then_it_is_received():
    require_services_mode()
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer)
    text = uuid.uuid4().hex

    async def round_trip() -> dict:
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "test.message", "text": text})
            return await asyncio.wait_for(layer.receive(channel), timeout=10)
        finally:
            await layer.close_pools()

    assert async_to_sync(round_trip)() == {"type": "test.message", "text": text}


def test_given_services_mode_then_the_channel_layer_outwaits_its_blocking_receive():
    """redis-py 8's 5 s default would kill the 5 s blocking receive (channels_redis #422); no
    timeout at all would hang forever on a lost reply. The timeout is above the receive's."""
    require_services_mode()
    from channels.layers import get_channel_layer
    from channels_redis.utils import create_pool

    layer = get_channel_layer()
    pool = create_pool(layer.hosts[0])
    assert pool.connection_kwargs["socket_timeout"] > layer.brpop_timeout * 2


# --- e) Celery on Redis runs the periodic expiry task ------------------------------------------

CELERY_WORKER = (
    PYTHON,
    "-m",
    "celery",
    "--app=cryptopay",
    "worker",
    "--pool=solo",
    "--concurrency=1",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--loglevel=INFO",
)


def _test_database_url() -> str:
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{quote(db['USER'] or 'postgres', safe='')}{password}"
        f"@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextmanager
def celery_worker(*, queue: str, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A real worker consuming only ``queue``, logging to ``log``; stopped and its queue's keys
    removed (never a flush) on exit."""
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*CELERY_WORKER, "-Q", queue, "-n", f"{queue}@%h"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield worker
    finally:
        _stop_group(worker)
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()


def _wait_until(condition, *, seconds: float, worker: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert worker.poll() is None, f"worker exited ({worker.returncode}):\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()}")


@pytest.mark.django_db(transaction=True)
def test_given_an_overdue_payment_when_a_celery_worker_runs_the_expiry_task_then_it_expires_once(
    tmp_path,
):
    require_services_mode()
    payment = make_payment()
    Payment.objects.filter(pk=payment.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    queue = f"cryptopay-test-{uuid.uuid4().hex}"
    log = tmp_path / "worker.log"
    env = subprocess_env(
        drop=("DATABASE_URL", "REDIS_URL"),
        DATABASE_URL=_test_database_url(),
        REDIS_URL=os.environ["REDIS_URL"],
    )

    def status() -> str:
        return Payment.objects.values_list("status", flat=True).get(pk=payment.pk)

    with celery_worker(queue=queue, log=log, env=env) as worker:
        first = tasks.payments_expire_due.apply_async(queue=queue)
        _wait_until(
            lambda: status() == PaymentStatus.EXPIRED,
            seconds=60,
            worker=worker,
            log=log,
            what="the payment to expire",
        )
        _wait_until(
            lambda: f"[{first.id}] succeeded" in log.read_text(),
            seconds=30,
            worker=worker,
            log=log,
            what="the first run to finish",
        )
        # A second sweep finds nothing left to do.
        second = tasks.payments_expire_due.apply_async(queue=queue)
        _wait_until(
            lambda: f"[{second.id}] succeeded" in log.read_text(),
            seconds=60,
            worker=worker,
            log=log,
            what="the second run to finish",
        )

    expired = PaymentEvent.objects.filter(payment=payment, type=PaymentEvent.Type.EXPIRED)
    assert expired.count() == 1
    assert expired.get().data["to"] == {"status": "expired", "sub_status": None}
    assert status() == PaymentStatus.EXPIRED


REDIS_PREFIX_PROBE = """
import json

import django

django.setup()

from django.conf import settings

print(json.dumps([
    settings.CACHES["default"]["KEY_PREFIX"],
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
    settings.API_AUTH_THROTTLE_REDIS_PREFIX,
    settings.NOTIFY_REDIS_PREFIX,
    settings.IDEMPOTENCY_REDIS_PREFIX,
    settings.BREAKER_KEY_PREFIX,
    settings.WEBSOCKET_REDIS_PREFIX,
]))
"""


def test_given_one_redis_prefix_then_every_redis_key_prefix_starts_with_it():
    prefixes = probe_settings(
        production_env(CRYPTOPAY_REDIS_PREFIX="shop-b"), probe=REDIS_PREFIX_PROBE
    )
    assert prefixes[0] == "shop-b"
    assert all(prefix.startswith("shop-b:") for prefix in prefixes[1:])
    assert len(set(prefixes)) == 7


def test_settings_read_each_environment_variable_once():
    source = (REPO / "cryptopay" / "settings.py").read_text()
    names = re.findall(r'env_\w+\(\s*"([A-Z_0-9]+)"', source)
    assert len(names) > 50
    assert sorted({name for name in names if names.count(name) > 1}) == []
