"""A live create on a merchant with many payments: the address and gap-limit lookups as they were
against now, side by side, and a whole live create against a test-mode one.

    .venv/bin/python -m bench.live_create [--payments 300000] [--rounds 5] [--per-round 20]

A live create (the merchant's own wallet key) asks two things of the payments table that a
test-mode create (the development chain, what bench/api_capacity.py measures) does not: whether
another payment already has the derived address (a wallet key shared by two merchants), and how
many addresses of the key were handed out since the last paid one (the gap limit). Both used to
be answered by reading every payment; now each is index scans that stop at what they look for.

Runs in a scratch database (``cryptopay_live_create_<pid>``, dropped at the end) seeded with
``--payments`` payments of one merchant's ETH key, one in a thousand paid, plus as many of a second
merchant. No chain node is asked: a create derives its address from the key. Variants alternate
in rounds, in a rotating order:

  lookups as they were   the two queries as payments.addresses wrote them before (``iexact`` on
                         the address; key space OR currencies, ordered by index)
  lookups now            ``_address_check`` (is the address anybody's, and was one of the key's
                         last indexes paid: one statement) and ``unpaid_address_run``
  live create            ``payment_create`` with the merchant's wallet key: the whole create
                         (then, untimed, the payment is paid: the key stays within the gap
                         limit, as a merchant's whose buyers pay)
  test-mode create       the same create on the development chain (``livemode`` False)

Printed: p50 per variant in ms, the ratios, and a ``RESULT {json}`` line for bench/report.py.
"""

from __future__ import annotations

import argparse
import statistics
from decimal import Decimal

from bench.results import emit, figure, rotating_rounds, timed
from testing.scratch import scratch_environment


def account_xpub() -> str:
    import os

    from bip_utils import Bip44, Bip44Coins

    account = Bip44.FromSeed(os.urandom(64), Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
    return account.PublicKey().ToExtended()


def seed(*, merchant_id: int, template_id: int, count: int, space: str | None) -> None:
    """``count`` copies of the template payment for the merchant, with their own ids, addresses
    and indexes after the template's; one in a thousand paid."""
    from django.db import connection

    from payments.models import Payment

    columns = [str(f.column) for f in Payment._meta.local_concrete_fields if not f.primary_key]
    made = {
        "public_id": "'pay_' || substr(md5(%(tag)s || g::text), 1, 24)",
        "checkout_token": "md5('token' || %(tag)s || g::text)",
        "deposit_address": "'0x' || substr(md5('address' || %(tag)s || g::text), 1, 40)",
        "derivation_index": "derivation_index + g",
        "order_id": "NULL",
        "merchant_id": "%(merchant)s",
        "key_space": "%(space)s",
        "amount_received": "CASE WHEN g %% 1000 = 0 THEN 1 ELSE 0 END",
    }
    quoted = ", ".join(f'"{column}"' for column in columns)
    values = ", ".join(made.get(column, f'"{column}"') for column in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Payment._meta.db_table} ({quoted}) SELECT {values} "  # noqa: S608
            f"FROM {Payment._meta.db_table}, generate_series(1, %(count)s) g WHERE id = %(id)s",
            {"tag": str(merchant_id), "merchant": merchant_id, "space": space, "count": count,
             "id": template_id},
        )  # fmt: skip
        cursor.execute(f"ANALYZE {Payment._meta.db_table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()
    chains = '{"ethereum": {"kind": "evm", "currency": "ETH", "nodes": ["http://127.0.0.1:9"]}}'
    with scratch_environment("live_create", {"CRYPTOPAY_CHAINS": chains}):
        run(args.payments, args.rounds, args.per_round)


def run(count: int, rounds: int, per_round: int) -> None:
    from django.db.models import Q

    from accounts import services as accounts
    from payments import addresses
    from payments.models import AddressIndex, MerchantWallet, Payment
    from payments.services import payment_create

    merchant, other = accounts.merchant_create(name="bench"), accounts.merchant_create(name="b2")
    wallet = MerchantWallet.objects.create(
        merchant=merchant, crypto_currency="ETH", extended_public_key=account_xpub()
    )
    MerchantWallet.objects.create(
        merchant=other, crypto_currency="ETH", extended_public_key=account_xpub()
    )

    def create(livemode: bool = True) -> Payment:
        return payment_create(
            merchant=merchant,
            fiat_amount=Decimal("19.99"),
            fiat_currency="USD",
            crypto_currency="ETH",
            livemode=livemode,
        )

    first = create()
    space = first.key_space
    assert first.livemode and space is not None and space.startswith("key:"), space
    assert first.derivation_index is not None
    seed(merchant_id=merchant.pk, template_id=first.pk, count=count, space=space)
    seed(merchant_id=other.pk, template_id=first.pk, count=count, space=f"{space}-other")
    # The counter goes on after the seeded indexes, as it would have handed them out.
    AddressIndex.objects.filter(merchant=merchant, key_space=space).update(
        next_index=first.derivation_index + count + 1
    )
    probed = create()
    probe, probe_index = probed.deposit_address, probed.derivation_index
    assert probe is not None and probe_index is not None

    def lookups_before() -> None:
        Payment.objects.filter(deposit_address__iexact=probe).exists()
        (
            Payment.objects.filter(merchant=merchant, amount_received__gt=0)
            .filter(Q(key_space=space) | Q(key_space__isnull=True, crypto_currency__in=["ETH"]))
            .order_by("-derivation_index")
            .values_list("derivation_index", flat=True)
            .first()
        )

    def lookups_now() -> None:
        addresses._address_check(merchant=merchant, space=space, address=probe, index=probe_index)
        addresses.unpaid_address_run(merchant=merchant, wallet=wallet)

    def paid(payment: object) -> None:
        # Untimed: the buyer pays, as most do; the key stays within the gap limit.
        assert isinstance(payment, Payment)
        Payment.objects.filter(pk=payment.pk).update(amount_received=1)

    variants = {
        "lookups as they were": timed(lookups_before),
        "lookups now": timed(lookups_now),
        "live create": timed(create, after=paid),
        "test-mode create": timed(lambda: create(livemode=False)),
    }
    for run_variant in variants.values():
        run_variant()  # warm: imports, plans, caches
    samples = rotating_rounds(variants, rounds=rounds, per_round=per_round)

    p50 = {label: statistics.median(values) * 1000 for label, values in samples.items()}
    print(
        f"A live create's payment lookups, {Payment.objects.count():,} payments "
        f"({count:,} of the merchant's ETH key, one in a thousand paid); {rounds} rounds x "
        f"{per_round} calls per variant, rotating order, p50 in ms"
    )
    for label, value in p50.items():
        print(f"  {label:22} {value:9.2f}")
    before, now = p50["lookups as they were"], p50["lookups now"]
    live, test = p50["live create"], p50["test-mode create"]
    print(f"lookups now / as they were: {now / before:.4f} ({before / now:.0f}x faster)")
    print(f"live create / test-mode create: {live / test:.2f}")
    emit(
        "live_create",
        [
            figure("lookups as they were: p50", before, "ms", baseline=None),
            figure(
                "lookups now: p50", now, "ms", baseline="lookups as they were: p50", better="lower"
            ),
            figure("test-mode create: p50", test, "ms", baseline=None),
            figure(
                "live create: p50", live, "ms", baseline="test-mode create: p50", better="lower"
            ),
        ],
        payments=Payment.objects.count(),
    )


if __name__ == "__main__":
    main()
