"""The gap limit protects the merchant: too many unpaid addresses in a row on one wallet key show in
/health/external and in the admin, addresses keep being issued, and a payment clears it (anvil,
PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from payments.chains.derivation import GAP_LIMIT
from resilience import degradation
from tests.factories import make_payment, staff_client
from tests.payments.chains.helpers import poll_chain, refresh

pytestmark = pytest.mark.django_db

JSON: dict[str, Any] = {"HTTP_ACCEPT": "application/json"}


@pytest.fixture(autouse=True)
def _clean_states():
    degradation._local_states.clear()
    yield
    degradation._local_states.clear()


@pytest.fixture
def operator(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", None))
    return client


def gap_check() -> dict:
    return staff_client().get("/health/external", **JSON).json()["checks"]["wallets:gap-limit"]


def test_unpaid_addresses_past_the_gap_limit_degrade_health_and_warn_until_one_is_paid(
    settings, anvil, wallet_merchant, operator
):
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    settings.CHAINS = {"ethereum": {"kind": "evm", "currency": "ETH", "confirmations": 1,
                                    "nodes": [anvil.url],
                                    "tokens": {"USDC": {"address": token, "decimals": 6}}}}  # fmt: skip
    merchant_page = f"/admin/accounts/merchant/{wallet_merchant.pk}/change/"
    poll_chain("ethereum")

    # Given GAP_LIMIT + 1 unpaid addresses of the merchant's ETH/USDC key
    payments = [
        make_payment(merchant=wallet_merchant, crypto_currency=currency, amount="1.00")
        for currency in ["ETH", "USDC"] * (GAP_LIMIT // 2) + ["ETH"]
    ]
    assert [p.derivation_index for p in payments] == list(range(GAP_LIMIT + 1))

    # Then /health/external reports the wallet dependency degraded, naming the run and the limit
    check = gap_check()
    assert check["status"] == "degraded"
    assert (
        f"merchant {wallet_merchant.public_id} ETH/USDC: {GAP_LIMIT + 1} unpaid addresses in a "
        f"row (gap limit {GAP_LIMIT})"
    ) in check["message"]
    # And the admin warns on the merchant's page and on the wallet rows
    page = operator.get(merchant_page).content.decode()
    assert f"ETH/USDC wallet: {GAP_LIMIT + 1} unpaid addresses in a row" in page
    assert "raise the wallet&#x27;s gap limit" in page or "raise the wallet's gap limit" in page
    wallets = operator.get("/admin/payments/merchantwallet/").content.decode()
    assert f"{GAP_LIMIT + 1} of {GAP_LIMIT} ⚠ over the gap limit" in wallets

    # When one more payment is created, it still gets a fresh address
    latest = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="1.00")
    assert latest.derivation_index == GAP_LIMIT + 1
    assert f"{GAP_LIMIT + 2} unpaid addresses" in gap_check()["message"]

    # When the buyer pays the latest address
    anvil.send_eth(latest.deposit_address, latest.crypto_amount)
    poll_chain("ethereum")
    assert refresh(latest).amount_received == latest.crypto_amount

    # Then the run is over: healthy again, no warning in the admin
    assert gap_check()["status"] == "ok"
    assert "unpaid addresses in a row, over" not in operator.get(merchant_page).content.decode()
    wallets = operator.get("/admin/payments/merchantwallet/").content.decode()
    assert f"0 of {GAP_LIMIT}" in wallets
