"""Merchant and ApiKey moving from payments to accounts (accounts 0001, payments 0010) on real
PostgreSQL: a database holding data migrates forward with every row still there and linked, the
foreign keys unchanged, permissions granted on the models still granted, and the API serving the
old key, payment and webhook endpoint."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from accounts.models import ApiKey, Merchant, random_token
from accounts.services import API_KEY_PREFIX_LENGTH, API_KEY_SECRET_LENGTH, api_key_hash
from notifications.models import WebhookEndpoint
from payments.models import AddressIndex, Payment
from resilience import clock

pytestmark = pytest.mark.django_db(transaction=True)

# Payments before the move (notifications and auth as they were then); accounts absent.
BEFORE = [
    ("payments", "0009_test_mode_keys_and_payments"),
    ("notifications", "0006_webhook_delivery_verbose_name_plural"),
    ("auth", "0012_alter_user_first_name_max_length"),
    ("accounts", None),
]
AFTER = [("accounts", "0001_initial"), ("payments", "0010_merchant_and_api_key_to_accounts")]


def migrate(targets):  # type: ignore[no-untyped-def]
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    # The state at the named migrations (an app migrated to None has no models in it).
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


@pytest.fixture
def before_the_move():
    try:
        yield migrate(BEFORE)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def _foreign_keys_to(table: str) -> set[tuple[str, str]]:
    """(table, column) of every foreign key constraint that references ``table``."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT cl.relname, att.attname
            FROM pg_constraint con
            JOIN pg_class cl ON cl.oid = con.conrelid
            JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
            WHERE con.contype = 'f' AND con.confrelid = %s::regclass
            """,
            [table],
        )
        return set(cursor.fetchall())


def test_a_database_holding_data_migrates_with_every_row_still_there_and_linked(
    before_the_move,
):
    # Given a merchant, its API key, a payment, an address counter and a webhook endpoint, written
    # through the models as they were before the move, and staff allowed to view API keys
    apps = before_the_move
    assert "accounts" not in {model._meta.app_label for model in apps.get_models()}
    merchant = apps.get_model("payments", "Merchant").objects.create(
        name="Old shop", default_fiat_currency="EUR", speed_policy=2
    )
    raw_key = "cpk_" + random_token(API_KEY_PREFIX_LENGTH + API_KEY_SECRET_LENGTH)
    api_key = apps.get_model("payments", "ApiKey").objects.create(
        merchant=merchant,
        name="old key",
        prefix=raw_key[: len("cpk_") + API_KEY_PREFIX_LENGTH],
        key_hash=api_key_hash(raw_key),
        scopes=["payments:read", "webhooks:manage"],
    )
    now = clock.now()
    payment = apps.get_model("payments", "Payment").objects.create(
        merchant=merchant,
        fiat_amount=Decimal("12.50"),
        fiat_currency="EUR",
        crypto_currency="BTC",
        crypto_amount=31_250,
        required_confirmations=2,
        underpayment_tolerance_percent=Decimal("0"),
        expires_at=now + timedelta(minutes=15),
        monitoring_until=now + timedelta(days=1),
        created_at=now,
    )
    apps.get_model("payments", "AddressIndex").objects.create(
        merchant=merchant, key_space="BTC", next_index=7
    )
    endpoint = apps.get_model("notifications", "WebhookEndpoint").objects.create(
        owner=merchant.public_id, url="https://shop.example/hooks", secret_encrypted="sealed"
    )
    content_types = apps.get_model("contenttypes", "ContentType").objects
    view_apikey = apps.get_model("auth", "Permission").objects.get(
        codename="view_apikey", content_type=content_types.get(app_label="payments", model="apikey")
    )
    operators = apps.get_model("auth", "Group").objects.create(name="key viewers")
    operators.permissions.add(view_apikey)
    merchant_fks = _foreign_keys_to("payments_merchant")

    # When the models move
    apps = migrate(AFTER)

    # Then every row is still there, linked as before, in the same tables with the same keys
    assert {model._meta.label for model in apps.get_models()} >= {
        "accounts.Merchant",
        "accounts.ApiKey",
    }
    assert "payments.Merchant" not in {model._meta.label for model in apps.get_models()}
    moved = Merchant.objects.get(pk=merchant.pk)
    assert (moved.public_id, moved.name, moved.default_fiat_currency, moved.speed_policy) == (
        merchant.public_id,
        "Old shop",
        "EUR",
        2,
    )
    key = ApiKey.objects.get(pk=api_key.pk)
    assert (key.merchant_id, key.prefix, key.key_hash) == (
        moved.pk,
        api_key.prefix,
        api_key.key_hash,
    )
    assert Payment.objects.get(pk=payment.pk).merchant == moved
    assert AddressIndex.objects.get(merchant=moved).next_index == 7
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).owner == moved.public_id
    assert (Merchant._meta.db_table, ApiKey._meta.db_table) == (
        "payments_merchant",
        "payments_apikey",
    )
    assert _foreign_keys_to("payments_merchant") == merchant_fks
    assert {("payments_apikey", "merchant_id"), ("payments_payment", "merchant_id")} <= merchant_fks
    # and a permission granted on API keys is still granted: the content type moved with the model
    granted = Group.objects.get(name="key viewers").permissions.get()
    assert (granted.content_type.app_label, granted.codename) == ("accounts", "view_apikey")

    # and the old key still authenticates and sees its payment and webhook endpoint
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    fetched = client.get(f"/api/v1/payments/{payment.public_id}")
    endpoints = client.get("/api/v1/webhook-endpoints")
    assert fetched.status_code == 200, fetched.content
    assert fetched.json()["id"] == payment.public_id
    assert endpoints.status_code == 200, endpoints.content
    assert [e["id"] for e in endpoints.json()["data"]] == [endpoint.public_id]


@pytest.mark.parametrize(("app_label", "name"), AFTER)
def test_the_move_runs_no_sql_on_the_tables(app_label, name):
    # The state moves; the database keeps its tables, columns and constraints as they are.
    out = io.StringIO()

    call_command("sqlmigrate", app_label, name, stdout=out)

    statements = [
        line for line in out.getvalue().splitlines() if line and not line.startswith("--")
    ]
    assert statements == ["BEGIN;", "COMMIT;"]
    assert "-- (no-op)" in out.getvalue()


@pytest.fixture
def before_the_logo_table():
    try:
        yield migrate([("accounts", "0001_initial")])
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_logos_stored_on_merchant_rows_move_to_their_table_and_back(before_the_logo_table):
    # Given one merchant with a logo in the old columns and one without
    apps = before_the_logo_table
    merchants = apps.get_model("accounts", "Merchant").objects
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    branded = merchants.create(name="Branded", logo=png, logo_content_type="image/png")
    plain = merchants.create(name="Plain")

    # When the logo table's migration runs
    apps = migrate([("accounts", "0002_merchant_logo_table")])

    # Then the logo is in its table, byte for byte, and the plain merchant has none
    logos = apps.get_model("accounts", "MerchantLogo").objects
    moved = logos.get(merchant_id=branded.pk)
    assert (bytes(moved.image), moved.content_type) == (png, "image/png")
    assert not logos.filter(merchant_id=plain.pk).exists()
    with connection.cursor() as cursor:
        columns = {c.name for c in connection.introspection.get_table_description(
            cursor, "payments_merchant"
        )}  # fmt: skip
    assert not {"logo", "logo_content_type"} & columns

    # And migrating back puts it on the merchant row again
    apps = migrate([("accounts", "0001_initial")])
    back = apps.get_model("accounts", "Merchant").objects.get(pk=branded.pk)
    assert (bytes(back.logo), back.logo_content_type) == (png, "image/png")
