"""An embedded install made before crypto amounts were exact on SQLite migrates in place: its
amounts keep their values, its columns become exact, and new wei amounts are stored exactly.

Runs `manage.py` in embedded mode (no DATABASE_URL / REDIS_URL) on a real SQLite file in a temp
state directory, loaded from a dump of such an install (tests/payments/data/).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.test_make_run import REPO, embedded_env

LEGACY_DUMP = Path(__file__).parent / "data" / "embedded_install_at_0004.sql"

READ_BACK = """
import json
from decimal import Decimal
from payments import services
from payments.models import Merchant, Payment, PaymentTransaction
before = {p.public_id: [p.crypto_amount, p.amount_received, p.amount_confirmed]
          for p in Payment.objects.all()}
big = services.payment_create(merchant=Merchant.objects.get(), fiat_amount=Decimal("1000000"),
                              fiat_currency="USD", crypto_currency="ETH")
print(json.dumps({
    "before": before,
    "transactions": list(PaymentTransaction.objects.values_list("amount", flat=True)),
    "big": str(big.crypto_amount),
    "big_read_back": str(Payment.objects.get(pk=big.pk).crypto_amount),
    "received": list(Payment.objects.filter(amount_received__gt=0).values_list("public_id", flat=True)),
}))
"""


def manage(state_dir: Path, *args: str) -> str:
    env = {**embedded_env(), "CRYPTOPAY_STATE_DIR": str(state_dir), "CRYPTOPAY_RATE_PROVIDERS": ""}
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_given_an_install_with_numeric_amount_columns_when_migrated_then_amounts_are_kept_and_stored_exactly(
    tmp_path,
):
    database = tmp_path / "cryptopay.sqlite3"
    with sqlite3.connect(database) as legacy:
        legacy.executescript(LEGACY_DUMP.read_text())
        declared = {row[1]: row[2] for row in legacy.execute("PRAGMA table_info(payments_payment)")}
    legacy.close()
    assert declared["crypto_amount"] == "decimal"

    manage(tmp_path, "migrate", "--noinput", "-v0")
    result = json.loads(manage(tmp_path, "shell", "-v0", "-c", READ_BACK).strip().splitlines()[-1])

    assert result["before"] == {
        "pay_Sq3D6xz5STV8z4dJE4e2WmJi": [166667, 66667, 66667],
        "pay_eAo5S1Kbl1e4otG71dLDeYCb": [9000000000000000000, 0, 0],
    }
    assert result["transactions"] == [66667]
    assert result["received"] == ["pay_Sq3D6xz5STV8z4dJE4e2WmJi"]
    # 1 000 000 USD at the static 3000 USD/ETH: 21 digits of wei, beyond 64 bits.
    assert result["big"] == result["big_read_back"] == "333333333333333333334"
    with sqlite3.connect(database) as migrated:
        kinds = migrated.execute(
            "SELECT DISTINCT typeof(crypto_amount), typeof(amount_received), length(crypto_amount)"
            " FROM payments_payment"
        ).fetchall()
        declared = {
            row[1]: row[2] for row in migrated.execute("PRAGMA table_info(payments_payment)")
        }
    migrated.close()
    assert kinds == [("text", "text", 78)]
    assert declared["crypto_amount"].lower() == "text"
