"""All configuration, read from the environment in one place.

Two shapes share the same code paths:

* **Embedded default** (no ``DATABASE_URL`` / ``REDIS_URL``): SQLite, local-memory cache,
  in-memory channel layer, Celery tasks and the periodic schedule run in-process, development
  chain on. One ``make run`` and it works.
* **Services** (``DATABASE_URL`` and ``REDIS_URL`` set): PostgreSQL through psycopg 3,
  django-redis, channels-redis and Celery on Redis.

Every tunable is read from one environment variable, has a default and a comment saying why it
exists. A comment that says "the specification's default" marks a number taken from the
gateway's original specification (intervals, retries, batching); the others say where theirs
come from.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_decimal(name: str, default: str) -> Decimal:
    raw = os.environ.get(name) or default
    try:
        value = Decimal(raw)
    except ArithmeticError as exc:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {raw!r}") from exc
    if not value.is_finite():
        raise ImproperlyConfigured(f"{name} must be finite, got {raw!r}")
    return value


def env_seconds(name: str, default: float) -> timedelta:
    """A duration given in seconds (decimals allowed, e.g. 0.1)."""
    return timedelta(microseconds=int(env_decimal(name, str(default)) * 1_000_000))


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
# Every Redis key of ours starts with this (cache, channel layer, queues, breakers, idempotency,
# throttle, connection registry); deployments, benches and test runs sharing a Redis need
# distinct ones. The seven prefixes below are derived from it.
REDIS_PREFIX = env_str("CRYPTOPAY_REDIS_PREFIX", "cryptopay")
# After a Redis call times out (Redis hangs rather than refuses), this process fails every call
# to that server at once for this long, then lets one probe through: a hung Redis costs one
# timeout per period, not one per call; a Redis that is back is used again within it.
REDIS_TIMEOUT_HOLD = env_seconds("CRYPTOPAY_REDIS_TIMEOUT_HOLD_SECONDS", 2)
# Embedded mode is a local, single-process setup; it is what `make run` serves.
EMBEDDED = not DATABASE_URL and not REDIS_URL
if bool(DATABASE_URL) != bool(REDIS_URL):
    raise ImproperlyConfigured(
        "Set both DATABASE_URL and REDIS_URL (services mode) or neither (embedded mode)."
    )

# DEBUG defaults on only in embedded mode: a deployment with real services is production unless
# someone says otherwise.
DEBUG = env_bool("DEBUG", EMBEDDED)

LOCAL_STATE_DIR = Path(env_str("CRYPTOPAY_STATE_DIR", str(BASE_DIR / ".local")))


def _embedded_secret_key() -> str:
    """A per-checkout key kept in .local/, so sessions and demo credentials survive restarts."""
    LOCAL_STATE_DIR.mkdir(parents=True, exist_ok=True)
    key_file = LOCAL_STATE_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _embedded_secret_key()
# Previous SECRET_KEYs, comma-separated: rotating SECRET_KEY keeps sessions valid and webhook
# secrets encrypted under an old key readable until `manage.py rotate_encryption_key` has run.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", "")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django_prometheus",
    "django.contrib.admin",
    "django.contrib.auth",
    "axes",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "health_check",
    "import_export",
    "cryptopay",
    "resilience",
    "accounts",
    "notifications",
    "payments",
]

MIDDLEWARE = [
    # Outermost: request metrics cover everything below, and every log line of the request
    # (also redirects and errors) carries its correlation id.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "cryptopay.correlation.CorrelationIdMiddleware",
    # Before anything asks for the host: a wrong Host must not reach Django's debug page.
    "accounts.api_errors.DisallowedHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "cryptopay.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "accounts.api_errors.ApiErrorMiddleware",
    "resilience.idempotency.IdempotencyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, as django-axes requires: it turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "cryptopay.urls"
WSGI_APPLICATION = "cryptopay.wsgi.application"
ASGI_APPLICATION = "cryptopay.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Web workers and the database -------------------------------------------------------------
# Web worker processes of ``manage.py serve``: one per core by default, as one Python process uses
# about one core (the GIL). WEB_CONCURRENCY is the name uvicorn and gunicorn read;
# CRYPTOPAY_WEB_WORKERS is the older one. Above 1, set PROMETHEUS_MULTIPROC_DIR so /metrics sees
# every worker. Embedded mode always runs one (in-memory channel layer, in-process schedule).
SERVER_WORKERS = max(
    1, env_int("WEB_CONCURRENCY", env_int("CRYPTOPAY_WEB_WORKERS", os.cpu_count() or 1))
)
# PostgreSQL's max_connections (its default), and the connections kept out of the web workers'
# share: Celery worker and beat, the dispatcher, migrations, an operator's psql, the server's
# superuser_reserved_connections.
DATABASE_MAX_CONNECTIONS = env_int("CRYPTOPAY_DB_MAX_CONNECTIONS", 100)
DATABASE_RESERVED_CONNECTIONS = env_int("CRYPTOPAY_DB_RESERVED_CONNECTIONS", 30)


def database_pool_max(*, workers: int, max_connections: int, reserved: int) -> int:
    """Connections per process: the web workers share what the other processes leave,
    ``(max_connections - reserved) // workers``, capped at 16 (more does not make one process,
    bound by its core, faster) and at least 2 (a request and the health check)."""
    return max(2, min(16, (max_connections - reserved) // max(1, workers)))


# --- Database -----------------------------------------------------------------------------------
# Longest statement the server runs for us; no request or task needs more (0 = no limit, e.g. for
# a migration that rebuilds a large table).
DATABASE_STATEMENT_TIMEOUT = env_seconds("CRYPTOPAY_DB_STATEMENT_TIMEOUT_SECONDS", 30)
# A transaction idle this long was abandoned by its thread: the server ends it and frees its locks.
# Above the budgets of outside calls (chain poll 30 s), in case one runs inside a transaction.
DATABASE_IDLE_IN_TRANSACTION_TIMEOUT = env_seconds(
    "CRYPTOPAY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", 60
)
# Unacknowledged data older than this fails the connection (a frozen or partitioned server).
DATABASE_TCP_USER_TIMEOUT = env_seconds("CRYPTOPAY_DB_TCP_USER_TIMEOUT_SECONDS", 10)
# The pool retries a lost database this often, so it is used again within this of coming back.
DATABASE_RECONNECT_INTERVAL = env_seconds("CRYPTOPAY_DB_RECONNECT_INTERVAL_SECONDS", 0.2)


# Server-side binding and prepared statements on PostgreSQL. Off behind a pooler in transaction
# mode that does not keep prepared statements apart per client (PgBouncer before 1.21, or 1.21+
# with max_prepared_statements = 0): a statement prepared on one server connection is unknown
# on the next.
DATABASE_PREPARED_STATEMENTS = env_bool("CRYPTOPAY_DB_PREPARED_STATEMENTS", True)
# Executions of one statement on a connection before it is prepared: psycopg's default, so a
# statement run once (a migration, an admin page) costs the server no memory.
DATABASE_PREPARE_THRESHOLD = env_int("CRYPTOPAY_DB_PREPARE_THRESHOLD", 5)


def _milliseconds(value: timedelta) -> int:
    return round(value.total_seconds() * 1000)


if DATABASE_URL:
    # A pool per process, not persistent connections: a CONN_MAX_AGE connection is tied to the
    # thread that opened it (under Django's ASGI handler, a thread per request: they piled up to
    # max_connections, found by bench/api_throughput.py), and the pool replaces a dead connection
    # before a request gets it. It bounds them and hands them from thread to thread.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    # Django's backend with a pool that replaces every dead connection at the first one found and
    # reconnects at a short fixed interval (resilience/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "resilience.postgresql"
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # Server-side limits, so neither a runaway query nor a transaction its thread
            # abandoned (a hung outside call, a killed worker) holds locks and a connection.
            "options": (
                f"-c statement_timeout={_milliseconds(DATABASE_STATEMENT_TIMEOUT)} "
                "-c idle_in_transaction_session_timeout="
                f"{_milliseconds(DATABASE_IDLE_IN_TRANSACTION_TIMEOUT)}"
            ),
            # Client-side: a server that stops acknowledging (frozen host, network partition)
            # fails the connection after this instead of the kernel's ~15 minutes of retries,
            # and keepalives find a dead peer on an idle connection.
            "tcp_user_timeout": _milliseconds(DATABASE_TCP_USER_TIMEOUT),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "connect_timeout": 5,
        }
    )
    if DATABASE_PREPARED_STATEMENTS:
        # Parameters bound by the server, and a statement this connection has run
        # DATABASE_PREPARE_THRESHOLD times prepared (psycopg's per-connection cache): the server
        # then skips parsing and planning it. bench/api_capacity.py: PostgreSQL's CPU per create
        # fell by about a quarter, per read by about 40 %.
        DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
        DATABASES["default"]["OPTIONS"]["prepare_threshold"] = DATABASE_PREPARE_THRESHOLD
    DATABASES["default"]["OPTIONS"]["pool"] = {
        # Connections per process (each web worker, each Celery child, the dispatcher): by
        # default sized so that web workers x max_size stays under PostgreSQL's max_connections
        # minus the reserve for the other processes (database_pool_max above).
        "min_size": env_int("CRYPTOPAY_DB_POOL_MIN", 1),
        "max_size": env_int(
            "CRYPTOPAY_DB_POOL_MAX",
            database_pool_max(
                workers=SERVER_WORKERS,
                max_connections=DATABASE_MAX_CONNECTIONS,
                reserved=DATABASE_RESERVED_CONNECTIONS,
            ),
        ),
        # How long a request waits for a free connection before failing (then a 503).
        "timeout": env_int("CRYPTOPAY_DB_POOL_TIMEOUT_SECONDS", 10),
        "reconnect_interval": DATABASE_RECONNECT_INTERVAL.total_seconds(),
    }
    # With a pool, Django turns this into the pool's check: a connection broken by a database
    # restart or a network fault is replaced before a request gets it.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    LOCAL_STATE_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(LOCAL_STATE_DIR / "cryptopay.sqlite3"),
            # Tests in embedded mode run on a file too, as an install does, not in memory.
            "TEST": {"NAME": LOCAL_STATE_DIR / "test-cryptopay.sqlite3"},
            # WAL + IMMEDIATE lets the web server and the in-process scheduler write without
            # "database is locked" errors.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Threads per web worker that run Django's request handling (cryptopay/asgi.py). Few: a worker's
# threads share one core and one GIL, and more of them only pass it back and forth while their
# transactions wait (one worker, 16 clients: creates/s +30 % and reads/s +10 % with 4 threads
# against 16, bench/api_capacity.py). Never more than the pool has connections (a request holds
# at most one). Raise it where requests wait on slow outside calls rather than on the CPU.
SERVER_THREADS = env_int(
    "CRYPTOPAY_WEB_THREADS",
    min(4, DATABASES["default"].get("OPTIONS", {}).get("pool", {}).get("max_size", 16)),
)

# --- Cache, channel layer, Celery ---------------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                # Redis is an accelerator: fail in well under a second and let callers degrade,
                # instead of redis-py 8's default three retries with backoff (~4 s).
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
                "CONNECTION_POOL_KWARGS": {"retry": Retry(NoBackoff(), 0)},
                # A Redis that timed out is not asked again for REDIS_TIMEOUT_HOLD, by any
                # client of this process (resilience/redis_client.py).
                "CONNECTION_POOL_CLASS": "resilience.redis_client.HeldConnectionPool",
            },
        }
    }
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            # channels-redis's layer with a receive that always ends when cancelled (see the
            # module: Python 3.11's wait_for can swallow the cancellation).
            "BACKEND": "cryptopay.channel_layer.RedisChannelLayer",
            # redis-py 8 defaults socket_timeout to 5 s, which kills the layer's 5 s blocking
            # receive (channels_redis #422). Not None either: a connection whose reply was lost
            # (a network black hole) would then wait forever. 15 s is three blocking receives.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 15,
                        # redis-py's asyncio pool stops at 100 and then fails at once: a burst of
                        # reconnecting browsers after a deploy needs more group operations.
                        "max_connections": env_int("CRYPTOPAY_CHANNELS_MAX_CONNECTIONS", 1000),
                    }
                ],
                "prefix": f"{REDIS_PREFIX}:asgi",
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    # Embedded: tasks run inline; `manage.py serve` runs the beat schedule in a thread.
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True

CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# How often the watchers poll their nodes; a block every ~2.5 min (LTC) or 12 s (ETH) needs no less.
CHAIN_POLL_INTERVAL = env_seconds("CRYPTOPAY_CHAIN_POLL_SECONDS", 5)
# Health monitoring (the specification's default: every 30 s) updates each dependency's level and
# alerts on changes; a level older than three of these reads as Unknown.
HEALTH_MONITOR_INTERVAL = env_seconds("CRYPTOPAY_HEALTH_MONITOR_SECONDS", 30)
# The dashboard's sparklines: a point every 30 s (120 points below make the last hour).
TIMESERIES_SAMPLE_SECONDS = env_seconds("CRYPTOPAY_TIMESERIES_SAMPLE_SECONDS", 30)
# Retries of webhook deliveries whose backoff has elapsed, this often...
WEBHOOK_SWEEP_INTERVAL = env_seconds("CRYPTOPAY_WEBHOOK_SWEEP_SECONDS", 5)
# ... each sweep sending batch after full batch for up to this long (under the interval, so sweeps
# do not pile up): a backlog of due deliveries leaves as fast as endpoints answer, not 64 a sweep.
WEBHOOK_SWEEP_BUDGET = env_seconds("CRYPTOPAY_WEBHOOK_SWEEP_BUDGET_SECONDS", 4)
# The one beat schedule.
CELERY_BEAT_SCHEDULE = {
    "chains-watch": {
        "task": "payments.tasks.chains_watch",
        # Each run polls every configured chain once; a lock keeps runs from overlapping.
        "schedule": CHAIN_POLL_INTERVAL,
    },
    "rates-refresh-in-use": {
        "task": "payments.tasks.rates_refresh_in_use",
        # Keeps quotes for pairs in use fresh so payment creation rarely waits on a provider.
        "schedule": env_seconds("CRYPTOPAY_RATE_REFRESH_SECONDS", 30),
    },
    "webhooks-deliver-due": {
        "task": "notifications.tasks.webhooks_deliver_due",
        "schedule": WEBHOOK_SWEEP_INTERVAL,
    },
    "notifications-requeue-lost": {
        "task": "notifications.tasks.events_requeue_lost",
        # Rebuilds the Redis queues from the outbox after Redis lost them (NOTIFY_REQUEUE_AFTER
        # says which events count as lost; this, how often to look).
        "schedule": env_seconds("CRYPTOPAY_NOTIFY_REQUEUE_SWEEP_SECONDS", 30),
    },
    "idempotency-keys-cleanup": {
        "task": "resilience.tasks.idempotency_keys_cleanup",
        # The specification's default, every 6 hours; replays are promised for IDEMPOTENCY_EXPIRY.
        "schedule": env_seconds("CRYPTOPAY_IDEMPOTENCY_CLEANUP_SECONDS", 6 * 3600),
    },
    "websocket-connections-cleanup": {
        "task": "notifications.tasks.websocket_connections_cleanup",
        # Every 5 minutes (the specification's default): drops connections of processes that died
        # without disconnecting.
        "schedule": env_seconds("CRYPTOPAY_WS_CLEANUP_SECONDS", 300),
    },
    "payments-expire-due": {
        "task": "payments.tasks.payments_expire_due",
        # How late an expiry may be noticed; short enough that a buyer never pays a dead invoice.
        "schedule": env_seconds("CRYPTOPAY_EXPIRY_SWEEP_SECONDS", 15),
    },
    "dependencies-monitor": {
        "task": "resilience.tasks.dependencies_monitor",
        "schedule": HEALTH_MONITOR_INTERVAL,
    },
    "dependencies-recover": {
        "task": "resilience.tasks.dependencies_recover",
        # Recovery of degraded services every 2 minutes (the specification's default).
        "schedule": env_seconds("CRYPTOPAY_RECOVERY_SECONDS", 120),
    },
    "timeseries-sample": {
        "task": "resilience.tasks.timeseries_sample",
        # The resilience dashboard's sparklines: breaker states and queue depths.
        "schedule": TIMESERIES_SAMPLE_SECONDS,
    },
}
# --- Admin CSV exports (django-import-export; payments/exports.py) -----------------------------
# Straight from the list's Export link (its filters apply), in the admins' one format (CSV).
IMPORT_EXPORT_SKIP_ADMIN_EXPORT_UI = True
# Whoever may view the rows may export them; nobody imports (no import admin is registered).
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"
# Order ids and descriptions come from merchants: "=HYPERLINK(...)" must not run in a spreadsheet.
IMPORT_EXPORT_ESCAPE_FORMULAE_ON_EXPORT = True
# --- Dashboard time series (resilience/timeseries.py) -------------------------------------------
# A point every 30 s and 120 points: the last hour, a few KB of Redis per series.
TIMESERIES_POINTS = env_int("CRYPTOPAY_TIMESERIES_POINTS", 120)
# Under the one base prefix, as every Redis key space of ours.
TIMESERIES_REDIS_PREFIX = f"{REDIS_PREFIX}:timeseries"

# --- Auth, i18n, static -------------------------------------------------------------------------
# django-axes first: it refuses a locked-out login before a password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Admin login brute force (django-axes, failures in the database, so embedded mode has it too):
# this many failed logins of one username from one client IP lock that pair out...
AXES_FAILURE_LIMIT = env_int("CRYPTOPAY_ADMIN_LOGIN_FAILURES", 5)
# ...for this long; per (username, IP), so a stranger cannot lock an operator out everywhere.
AXES_COOLOFF_TIME = env_seconds("CRYPTOPAY_ADMIN_LOGIN_LOCKOUT_SECONDS", 15 * 60)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The same client address as the API key throttle (CRYPTOPAY_TRUSTED_PROXIES).
AXES_CLIENT_IP_CALLABLE = "accounts.auth_throttle.client_ip_address"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
# The checkout page's languages (payments/locale; `make makemessages` / `make compilemessages`).
# Only the checkout switches language: the API and the admin stay English.
LANGUAGES = [("en", "English"), ("de", "Deutsch"), ("es", "Español")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (production mode passes `manage.py check --deploy`) -------------------------------
# Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For/-Proto are believed: the
# client address of the server's access log, the API key throttle and the admin login lockout.
# Empty: no proxy; headers of that name are the client's own words and are ignored.
TRUSTED_PROXIES = env_list("CRYPTOPAY_TRUSTED_PROXIES", "")
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"CRYPTOPAY_TRUSTED_PROXIES: {_proxy!r} is no IP or CIDR"
        ) from exc
# Without a proxy, a client sending X-Forwarded-Proto: https would pass for a TLS connection.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXIES else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
# Django's default, said out loud: full URLs (checkout tokens) never leave for other sites.
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Paths answered over plain HTTP even with SECURE_SSL_REDIRECT on: load balancers probe /health/*
# inside the network, and Prometheus scrapes /metrics on loopback (or inside the network with
# the token).
SECURE_REDIRECT_EXEMPT = [r"^health(/|$)", r"^metrics$"]

# --- REST API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.auth.HasApiKeyScope"],
    "DEFAULT_PARSER_CLASSES": ["accounts.api_errors.DecimalJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "accounts.api_errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "cryptopay API",
    "DESCRIPTION": (
        "Self-hosted crypto payment gateway. Authenticate with `Authorization: Bearer <api key>`. "
        'Every error has the shape `{"error": {"type", "code", "message", "param"}}`. '
        "Crypto amounts are exact decimal strings of integer base units; fiat amounts are decimal "
        "strings with the currency's exponent."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Docs assets served from our own static files: no CDN needed (air-gapped installs work).
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # One name for the crypto currency codes wherever they appear (one coin, or a list to pick).
    "ENUM_NAME_OVERRIDES": {"CryptoCurrencyEnum": "payments.currencies.CRYPTO_CODES"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "accounts.api_fields.close_request_bodies",
        "cryptopay.api_schema.document_operations",
    ],
}
# Bodies larger than this under /api/ get 413: a payment request is a few hundred bytes.
API_MAX_BODY_BYTES = env_int("CRYPTOPAY_API_MAX_BODY_BYTES", 64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_MAX_BODY_BYTES, 2_621_440)
# Deeper JSON bodies are a 400 json_too_deep: our payloads nest 2 levels, and Python's recursion
# limit (~1,000) would otherwise turn a deep body into a 500.
API_JSON_MAX_DEPTH = env_int("CRYPTOPAY_API_JSON_MAX_DEPTH", 32)
# --- HTTP server (manage.py serve: uvicorn, cryptopay/server.py) --------------------------------
# Worker processes: SERVER_WORKERS, with the database pool (it sizes the pool).
# A client must send a request's line and headers within this (slowloris holds sockets forever).
SERVER_HEADER_TIMEOUT = env_seconds("CRYPTOPAY_SERVER_HEADER_TIMEOUT_SECONDS", 10)
# Request line plus headers; larger gets 400 (h11's default, nginx allows 4 x 8 KiB).
SERVER_MAX_HEADER_BYTES = env_int("CRYPTOPAY_SERVER_MAX_HEADER_BYTES", 16 * 1024)
# An idle keep-alive connection is closed after this; behind a proxy keep it above the proxy's.
SERVER_KEEP_ALIVE = env_seconds("CRYPTOPAY_SERVER_KEEP_ALIVE_SECONDS", 5)
# On shutdown, requests in flight get this long to finish before connections are cut.
SERVER_GRACEFUL_SHUTDOWN = env_seconds("CRYPTOPAY_SERVER_GRACEFUL_SHUTDOWN_SECONDS", 20)

# Failed API key attempts one client IP may make per window before it gets 429 with Retry-After:
# a key's 32 random characters cannot be guessed, but a leaked prefix or a reused key can.
API_AUTH_FAILURE_LIMIT = env_int("CRYPTOPAY_AUTH_FAILURES_PER_WINDOW", 20)
# Failed attempts of any keys from one client IP per window before its failures get 429 instead of
# 401; valid keys from that IP are still served (behind a NAT or proxy many clients share it).
API_AUTH_IP_FAILURE_LIMIT = env_int("CRYPTOPAY_AUTH_IP_FAILURES_PER_WINDOW", 100)
API_AUTH_FAILURE_WINDOW = env_seconds("CRYPTOPAY_AUTH_FAILURE_WINDOW_SECONDS", 60)
API_AUTH_THROTTLE_REDIS_PREFIX = f"{REDIS_PREFIX}:authfail"
# How long a process may answer for an API key from memory: changes reach every process at once
# through Redis; this bounds the wait only if the process changing a key cannot reach it. 0: off.
API_KEY_CACHE_TTL = env_seconds("CRYPTOPAY_API_KEY_CACHE_SECONDS", 10)
API_KEY_CACHE_REDIS_PREFIX = f"{REDIS_PREFIX}:apikeys"

# --- Payments -----------------------------------------------------------------------------------
# Merchant defaults (BTCPay Server's); each merchant can change its own.
PAYMENT_EXPIRY_DEFAULT = env_seconds("CRYPTOPAY_PAYMENT_EXPIRY_SECONDS", 15 * 60)
# How long after expiry a paid-but-unconfirmed payment is still watched before it is invalid.
PAYMENT_MONITORING_WINDOW_DEFAULT = env_seconds("CRYPTOPAY_MONITORING_WINDOW_SECONDS", 24 * 3600)
# Percentage of the amount a buyer may fall short and still count as paid in full.
PAYMENT_UNDERPAYMENT_TOLERANCE_DEFAULT = env_decimal("CRYPTOPAY_UNDERPAYMENT_TOLERANCE", "0")
# Largest fiat amount a single payment may ask for; catches typos (cents sent as units).
PAYMENT_MAX_FIAT_AMOUNT = env_decimal("CRYPTOPAY_MAX_FIAT_AMOUNT", "1000000")
# Stripe-like metadata limits: enough for order references, too small to be a data store.
PAYMENT_METADATA_MAX_KEYS = env_int("CRYPTOPAY_METADATA_MAX_KEYS", 50)
PAYMENT_METADATA_MAX_KEY_LENGTH = env_int("CRYPTOPAY_METADATA_MAX_KEY_LENGTH", 40)
PAYMENT_METADATA_MAX_VALUE_LENGTH = env_int("CRYPTOPAY_METADATA_MAX_VALUE_LENGTH", 500)
PAYMENT_METADATA_MAX_BYTES = env_int("CRYPTOPAY_METADATA_MAX_BYTES", 8 * 1024)

# Chains to watch and their nodes, in failover order (see payments/chains/config.py). Empty:
# nothing is watched, and payments need the development chain.
CHAINS: dict = json.loads(env_str("CRYPTOPAY_CHAINS", "{}"))
# Per-attempt timeout of a node RPC call.
CHAIN_RPC_TIMEOUT = env_seconds("CRYPTOPAY_CHAIN_RPC_TIMEOUT_SECONDS", 5)
# How long one poll of one chain may scan before it saves its cursor and returns (the rest is
# the next poll's): well inside chains_watch's 120 s soft time limit, with room for every chain.
CHAIN_POLL_BUDGET = env_seconds("CRYPTOPAY_CHAIN_POLL_BUDGET_SECONDS", 30)

# Development chain: fake deterministic addresses that `manage.py simulate_payment` can "pay".
# On in embedded mode only, so a real deployment never hands out an address nobody watches.
DEV_CHAIN_ENABLED = env_bool("CRYPTOPAY_DEV_CHAIN", EMBEDDED)

# The last-resort level: conservative static rates (fiat per one coin), used when nothing
# better is available and always marked `source: "fallback"`. Override with a JSON object.
FALLBACK_RATES: dict[str, Decimal] = {
    pair: Decimal(value)
    for pair, value in json.loads(
        env_str(
            "CRYPTOPAY_FALLBACK_RATES",
            json.dumps(
                {
                    "BTC-USD": "60000",
                    "BTC-EUR": "55000",
                    "LTC-USD": "70",
                    "LTC-EUR": "64",
                    "ETH-USD": "3000",
                    "ETH-EUR": "2750",
                    "USDC-USD": "1",
                    "USDC-EUR": "0.92",
                    "USDT-USD": "1",
                    "USDT-EUR": "0.92",
                }
            ),
        )
    ).items()
}

# --- Notifications ------------------------------------------------------------------------------
# Keys encrypting webhook secrets at rest, newest first (the first encrypts, all decrypt;
# notifications/endpoint_secrets.py): a key of its own lets SECRET_KEY rotate without touching
# webhook signing. Empty: SECRET_KEY (and SECRET_KEY_FALLBACKS) do it.
ENCRYPTION_KEYS = env_list("CRYPTOPAY_ENCRYPTION_KEYS", "")
# Legacy single key (before CRYPTOPAY_ENCRYPTION_KEYS): still encrypts when that is empty, and
# always decrypts, so installs that set it keep working.
WEBHOOK_SECRETS_KEY = env_str("CRYPTOPAY_WEBHOOK_SECRETS_KEY")
# Webhook URLs resolving to private, loopback or link-local addresses are refused (SSRF) unless on.
WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = env_bool("CRYPTOPAY_WEBHOOK_ALLOW_PRIVATE", False)
# One delivery attempt; receivers should answer fast and do their work later.
WEBHOOK_TIMEOUT = env_seconds("CRYPTOPAY_WEBHOOK_TIMEOUT_SECONDS", 10)
# Retries with exponential backoff and jitter stop this long after the event (Stripe: 3 days).
WEBHOOK_RETRY_FOR = env_seconds("CRYPTOPAY_WEBHOOK_RETRY_FOR_SECONDS", 3 * 24 * 3600)
# First retry delay and cap of the backoff.
WEBHOOK_RETRY_INITIAL = env_seconds("CRYPTOPAY_WEBHOOK_RETRY_INITIAL_SECONDS", 10)
WEBHOOK_RETRY_MAX = env_seconds("CRYPTOPAY_WEBHOOK_RETRY_MAX_SECONDS", 3600)
# Requests in flight per endpoint: a hanging or slow receiver ties up only its own four.
WEBHOOK_ENDPOINT_CONCURRENCY = env_int("CRYPTOPAY_WEBHOOK_ENDPOINT_CONCURRENCY", 4)
# ... and while its latest answer was a 2xx and its median answer is under 50 ms: with four, a
# receiver answering in 1-2 ms capped a dispatcher at 2,000-4,000 deliveries/s; with 16, one
# dispatcher waited on answers part of the time, and 32 took it from 0.48x to 0.51x the minimal
# sender (bench/notifications.py, 8 paired rounds). Set it to the value above for a hard limit.
WEBHOOK_ENDPOINT_FAST_CONCURRENCY = env_int("CRYPTOPAY_WEBHOOK_ENDPOINT_FAST_CONCURRENCY", 32)
# Deliveries a dispatcher holds for one endpoint; beyond, they wait for the sweep (memory bound).
WEBHOOK_ENDPOINT_BACKLOG = env_int("CRYPTOPAY_WEBHOOK_ENDPOINT_BACKLOG", 1000)
# An endpoint whose median answer takes longer counts as failing for its breaker, even on 2xx.
WEBHOOK_SLOW = env_seconds("CRYPTOPAY_WEBHOOK_SLOW_SECONDS", 5)
# A sender's claim on a delivery; one that died holding it is retried after this (must exceed
# the timeout times the immediate retries: a sender never starts an attempt it cannot finish).
WEBHOOK_CLAIM = env_seconds("CRYPTOPAY_WEBHOOK_CLAIM_SECONDS", 300)
# High-priority deliveries are retried up to 3 times at once before the slow schedule (the
# specification's default, as are the batching figures below).
NOTIFY_HIGH_PRIORITY_RETRIES = env_int("CRYPTOPAY_NOTIFY_HIGH_RETRIES", 3)
# Adaptive batching: load = mean queued events over the last 10 samples.
NOTIFY_LOAD_WINDOW = env_int("CRYPTOPAY_NOTIFY_LOAD_WINDOW", 10)
NOTIFY_HIGH_LOAD_THRESHOLD = env_int("CRYPTOPAY_NOTIFY_HIGH_LOAD", 1000)  # queued events
NOTIFY_LOW_LOAD_THRESHOLD = env_int("CRYPTOPAY_NOTIFY_LOW_LOAD", 10)
# (interval seconds, batch size) per load level.
NOTIFY_BATCHING = {
    "high": (0.1, 200),
    "normal": (1.0, 50),
    "low": (5.0, 10),
}
# Events still undispatched this long after creation are queued again (lost from Redis).
NOTIFY_REQUEUE_AFTER = env_seconds("CRYPTOPAY_NOTIFY_REQUEUE_SECONDS", 30)
NOTIFY_REDIS_PREFIX = f"{REDIS_PREFIX}:notify"

# --- Exchange rates -----------------------------------------------------------------------------
# Providers in order: the first answering ones are used, the rest are backups. Empty list = static fallback rates only (offline installs).
RATE_PROVIDER_ORDER = env_list("CRYPTOPAY_RATE_PROVIDERS", "kraken,coinbase,bitstamp,binance")
# Base URL per provider (CRYPTOPAY_RATE_KRAKEN_URL...); empty = the exchange's public API.
RATE_PROVIDER_URLS = {
    name: env_str(f"CRYPTOPAY_RATE_{name.upper()}_URL")
    for name in ("kraken", "coinbase", "bitstamp", "binance", "gemini")
}
# One HTTP attempt; a ticker answers in well under a second when healthy.
RATE_PROVIDER_TIMEOUT = env_seconds("CRYPTOPAY_RATE_PROVIDER_TIMEOUT_SECONDS", 3)
# All attempts at one provider for one quote, retries included (Polly's total timeout, scaled).
RATE_PROVIDER_BUDGET = env_seconds("CRYPTOPAY_RATE_PROVIDER_BUDGET_SECONDS", 8)
# Providers asked at once per quote; more answers make the median harder to fool.
RATE_PROVIDERS_PER_QUOTE = env_int("CRYPTOPAY_RATE_PROVIDERS_PER_QUOTE", 3)
# With three or more answers, prices further than this from the median are dropped as outliers.
RATE_OUTLIER_PERCENT = env_decimal("CRYPTOPAY_RATE_OUTLIER_PERCENT", "2")
# Retry backoff (stamina): first wait and cap; a Retry-After above the cap skips to a backup.
RATE_RETRY_WAIT_INITIAL = env_seconds("CRYPTOPAY_RATE_RETRY_WAIT_INITIAL_SECONDS", 0.2)
RATE_RETRY_WAIT_MAX = env_seconds("CRYPTOPAY_RATE_RETRY_WAIT_MAX_SECONDS", 2)
# Payments may be priced from the static fallback rates only where stale prices are acceptable.
RATES_ALLOW_STATIC_FALLBACK = env_bool("CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK", EMBEDDED)
# Oldest quote a payment may be priced from (default: the emergency cache's bound).
RATES_MAX_QUOTE_AGE = env_seconds("CRYPTOPAY_RATES_MAX_QUOTE_AGE_SECONDS", 2 * 3600)
# Retry-After of a 503 rate_unavailable: about when the next refresh (periodic or a retried
# provider) may have a rate again, without a client hammering a gateway that has none.
RATES_RETRY_AFTER = env_seconds("CRYPTOPAY_RATES_RETRY_AFTER_SECONDS", 10)
# A provider whose host does not resolve or refuses is tried once, then skipped for the breaker's
# break (its breaker tripped) instead of retried on every quote: on an offline laptop (embedded
# mode) the first payment would otherwise wait seconds on exchanges it cannot reach.
RATES_SKIP_UNREACHABLE = env_bool("CRYPTOPAY_RATES_SKIP_UNREACHABLE", EMBEDDED)
# How long after its last payment a pair still counts as in use for the periodic refresh.
RATES_IN_USE_WINDOW = env_seconds("CRYPTOPAY_RATES_IN_USE_SECONDS", 3600)

# --- Resilience: rate cache, retries, idempotency, breakers, WebSocket connections ---------------
# Fresh rates live this long in the shared cache before a provider is asked again.
RATE_CACHE_TTL = env_seconds("CRYPTOPAY_RATE_CACHE_SECONDS", 5 * 60)
# A process reuses the rate it last read from the shared cache for this long without asking Redis
# (one round trip fewer per payment); a newer rate stored by another process is seen that much
# later, and every rate served is still one the shared cache held fresh.
RATE_CACHE_LOCAL_TTL = env_seconds("CRYPTOPAY_RATE_CACHE_LOCAL_SECONDS", 1)
# Stale rates may still be served this long when every provider is down.
RATE_EMERGENCY_CACHE_MAX_AGE = env_seconds("CRYPTOPAY_RATE_EMERGENCY_MAX_AGE_SECONDS", 2 * 3600)
# The single-flight refresh lease, renewed every third of it while the refresh runs: a process
# killed mid-refresh blocks other refreshers for this long, not for the provider budget.
RATE_REFRESH_LEASE = env_seconds("CRYPTOPAY_RATE_REFRESH_LEASE_SECONDS", 3)
# Retries of a failing outside call before giving up on it.
OUTSIDE_CALL_MAX_RETRIES = env_int("CRYPTOPAY_MAX_RETRIES", 3)
# How long a stored idempotent response is replayed, from its completion: Stripe's 24 hours.
IDEMPOTENCY_EXPIRY = env_seconds("CRYPTOPAY_IDEMPOTENCY_EXPIRY_SECONDS", 24 * 3600)
# Without an Idempotency-Key, only a body naming its business object by this field gets a key
# derived from the body; identical bodies without it are different customers. Empty: never.
IDEMPOTENCY_AUTOMATIC_KEY_FIELD = env_str("CRYPTOPAY_IDEMPOTENCY_AUTOMATIC_KEY_FIELD", "order_id")
# Wait before re-checking a key whose first request is still executing.
IDEMPOTENCY_CONFLICT_RETRY_DELAY = env_seconds("CRYPTOPAY_IDEMPOTENCY_CONFLICT_RETRY_SECONDS", 0.1)
# A claimed key whose request has not finished after this long is taken over (its process died).
IDEMPOTENCY_LEASE = env_seconds("CRYPTOPAY_IDEMPOTENCY_LEASE_SECONDS", 90)
IDEMPOTENCY_REDIS_PREFIX = f"{REDIS_PREFIX}:idempotency"
# Key material for stored answers that carry a secret (sealed at rest); empty = SECRET_KEY.
IDEMPOTENCY_SEALING_KEY = env_str("CRYPTOPAY_IDEMPOTENCY_SEALING_KEY")
# Extra paths (regexes) the middleware makes idempotent; the API's write views carry the decorator.
IDEMPOTENCY_MIDDLEWARE_PATHS = env_list("CRYPTOPAY_IDEMPOTENCY_PATHS", "")
# Who a request belongs to, for the middleware (keys are scoped by it).
IDEMPOTENCY_OWNER_RESOLVER = "accounts.auth.idempotency_owner"
# Whether the middleware may answer a cached replay before the view runs: where the view would
# have let the caller in (its permission check, made without the view).
IDEMPOTENCY_REPLAY_AUTHORIZER = "accounts.auth.idempotent_replay_permitted"
# How resilience (idempotency refusals, the health endpoint's 401) renders an error: the API's shape.
RESILIENCE_ERROR_RESPONSE = "accounts.api_errors.status_error_response"
# Circuit breaker (Polly v8 advanced breaker semantics).
BREAKER_FAILURE_RATIO = env_decimal("CRYPTOPAY_BREAKER_FAILURE_RATIO", "0.5")
BREAKER_SAMPLING_DURATION = env_seconds("CRYPTOPAY_BREAKER_SAMPLING_SECONDS", 30)
BREAKER_BREAK_DURATION = env_seconds("CRYPTOPAY_BREAKER_BREAK_SECONDS", 60)
BREAKER_MINIMUM_THROUGHPUT = env_int("CRYPTOPAY_BREAKER_MINIMUM_THROUGHPUT", 5)
# Redis keys of the shared breaker state.
BREAKER_KEY_PREFIX = f"{REDIS_PREFIX}:breaker"
# Live WebSocket connections one user may hold across all processes; the oldest is evicted.
WEBSOCKET_MAX_CONNECTIONS_PER_USER = env_int("CRYPTOPAY_WS_MAX_CONNECTIONS_PER_USER", 5)
# Each connection refreshes its presence this often, so the cap counts live connections only.
WEBSOCKET_HEARTBEAT = env_seconds("CRYPTOPAY_WS_HEARTBEAT_SECONDS", 30)
# A connection not refreshed for this long belongs to a dead process: three missed heartbeats.
WEBSOCKET_CONNECTION_TTL = env_seconds("CRYPTOPAY_WS_CONNECTION_TTL_SECONDS", 90)
# Each server process beats this often on its own (one Redis write), whatever its connections do.
WEBSOCKET_PROCESS_HEARTBEAT = env_seconds("CRYPTOPAY_WS_PROCESS_HEARTBEAT_SECONDS", 5)
# A process silent this long died (SIGKILL, OOM): its connections stop counting against the cap.
WEBSOCKET_PROCESS_TTL = env_seconds("CRYPTOPAY_WS_PROCESS_TTL_SECONDS", 15)
WEBSOCKET_REDIS_PREFIX = f"{REDIS_PREFIX}:ws"
# A reconnecting client missing more events than this is told to refetch over REST instead.
WEBSOCKET_REPLAY_LIMIT = env_int("CRYPTOPAY_WS_REPLAY_LIMIT", 200)
# ...or when what it missed is older than this (a stale tab should reload, not replay a day).
WEBSOCKET_REPLAY_WINDOW = env_seconds("CRYPTOPAY_WS_REPLAY_WINDOW_SECONDS", 3600)
# The checkout page polls this often when its WebSocket fails.
CHECKOUT_POLL_INTERVAL = env_seconds("CRYPTOPAY_CHECKOUT_POLL_SECONDS", 2)
# Embedded mode's channel layer lives in one process, so a payment changed by another process
# (manage.py simulate_payment, the scheduler) never reaches the page's socket through it: the
# checkout socket reads its payment's new events from the database this often instead (one
# indexed query per open checkout). 0 turns it off; with Redis the dispatcher delivers them.
CHECKOUT_STREAM_POLL_INTERVAL = env_seconds(
    "CRYPTOPAY_CHECKOUT_STREAM_POLL_SECONDS", 1 if EMBEDDED else 0
)
# Largest merchant logo the admin accepts (it is stored in the database and sent with pages).
MERCHANT_LOGO_MAX_BYTES = env_int("CRYPTOPAY_MERCHANT_LOGO_MAX_BYTES", 200_000)

# --- Degradation, recovery and health (resilience/degradation.py, resilience/health.py) ---------
# One health probe; a load balancer's probe (often 5 s) must get its answer before it gives up.
HEALTH_PROBE_TIMEOUT = env_seconds("CRYPTOPAY_HEALTH_PROBE_TIMEOUT_SECONDS", 5)
# Failed calls in a breaker's window at or above this ratio mark its dependency Degraded before the
# breaker trips at BREAKER_FAILURE_RATIO (0.1 is Polly's default failure ratio).
DEGRADATION_ERROR_RATIO = env_decimal("CRYPTOPAY_DEGRADATION_ERROR_RATIO", "0.1")
# Keys one Redis recovery scans for corrupted values; bounds the work on a large Redis.
RECOVERY_SCAN_LIMIT = env_int("CRYPTOPAY_RECOVERY_SCAN_LIMIT", 10_000)
# Bearer token monitoring sends for /health, /health/external and the checks' details (versions,
# error messages); empty: a staff session only. /health/live and /health/ready stay open.
HEALTH_TOKEN = env_str("CRYPTOPAY_HEALTH_TOKEN")

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# json: one JSON object per line for log shippers; plain: readable lines on a developer's terminal.
LOG_FORMAT = env_str("CRYPTOPAY_LOG_FORMAT", "plain" if EMBEDDED else "json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"CRYPTOPAY_LOG_FORMAT must be json or plain, got {LOG_FORMAT!r}")
# A warning repeated word for word within this window is written once, then summarised with its
# count when it comes back after the window: an offline embedded gateway would otherwise log the
# same provider failures every refresh (0 = every line, the default with services: log shippers
# count and deduplicate).
LOG_REPEAT_WINDOW = env_seconds("CRYPTOPAY_LOG_REPEAT_WINDOW_SECONDS", 300 if EMBEDDED else 0)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        # Order matters: secrets are removed before anything formats the record.
        "redact": {"()": "cryptopay.logs.RedactSecretsFilter"},
        "correlation": {"()": "cryptopay.logs.CorrelationIdFilter"},
        "repeats": {
            "()": "cryptopay.logs.RepeatedWarningFilter",
            "window": LOG_REPEAT_WINDOW.total_seconds(),
        },
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"},
        "json": {"()": "cryptopay.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact", "correlation", "repeats"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django adds its own console handler when DEBUG is on; one line per message is enough.
        "django": {"handlers": [], "propagate": True},
        "django.server": {"level": "WARNING"},
    },
}

# --- Metrics (resilience/metrics.py; PROMETHEUS_MULTIPROC_DIR: resilience/multiprocess.py) -------
# Bearer token Prometheus must send to /metrics; empty = loopback clients without a proxy only.
METRICS_TOKEN = env_str("CRYPTOPAY_METRICS_TOKEN")
