"""Environment defaults for the test run, loaded as a plugin (`-p tests.env_defaults` in
pyproject) so they are set before pytest-django reads the settings (a conftest is too late).

Tests run in production mode (DEBUG off) against the services in DATABASE_URL / REDIS_URL, with
the defaults `make test` uses when they are not given.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-" + "x" * 40)
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
# The test client speaks plain HTTP.
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("CACHE_KEY_PREFIX", f"cryptopay-test-{os.getpid()}")
os.environ.setdefault("CRYPTOPAY_BREAKER_KEY_PREFIX", f"cryptopay-test-{os.getpid()}:breaker")
os.environ.setdefault("CRYPTOPAY_IDEMPOTENCY_REDIS_PREFIX", f"cryptopay-test-{os.getpid()}:idem")
os.environ.setdefault("CRYPTOPAY_NOTIFY_REDIS_PREFIX", f"cryptopay-test-{os.getpid()}:notify")
os.environ.setdefault("CRYPTOPAY_AUTH_THROTTLE_REDIS_PREFIX", f"cryptopay-test-{os.getpid()}:auth")
# Every test client is 127.0.0.1 and many tests send wrong keys on purpose (the fuzzer thousands):
# the throttle's own tests set the production limit (tests/security/test_auth_throttle.py).
os.environ.setdefault("CRYPTOPAY_AUTH_FAILURES_PER_WINDOW", "1000000")
os.environ.setdefault("CRYPTOPAY_AUTH_IP_FAILURES_PER_WINDOW", "1000000")
os.environ.setdefault("CRYPTOPAY_WS_REDIS_PREFIX", f"cryptopay-test-{os.getpid()}:ws")
os.environ.setdefault("CRYPTOPAY_TIMESERIES_REDIS_PREFIX", f"cryptopay-test-{os.getpid()}:ts")
os.environ.setdefault("CRYPTOPAY_CHANNELS_PREFIX", f"cryptopay-test-{os.getpid()}:asgi")
# Webhook receivers in the tests listen on 127.0.0.1.
os.environ.setdefault("CRYPTOPAY_WEBHOOK_ALLOW_PRIVATE", "1")
# No test may reach a real exchange: rate tests point providers at fakes on 127.0.0.1.
os.environ.setdefault("CRYPTOPAY_RATE_PROVIDERS", "")
# The foundation tests price payments from the static rates; policy tests turn this off.
os.environ.setdefault("CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK", "1")
# pytest-django holds each non-transactional test in one transaction, idle while the test waits on
# servers and subprocesses; the production 60 s would end it mid-test. The idle-transaction test
# sets its own (tests/resilience/test_database_recovery.py).
os.environ.setdefault("CRYPTOPAY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", "600")
