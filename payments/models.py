from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models.expressions import Combinable

from accounts.models import Merchant, random_token
from cryptopay.currencies import FIAT_CHOICES
from payments.currencies import CRYPTO_CHOICES
from payments.money import plain_decimal
from payments.states import PaymentStatus, PaymentSubStatus


def new_payment_id() -> str:
    # 24 base62 characters: about 143 bits, unguessable.
    return "pay_" + random_token(24)


def new_checkout_token() -> str:
    # The buyer's credential for the checkout page and its live stream: the payment id alone
    # travels through merchant systems and logs, this token only in the checkout link.
    return random_token(32)


# Widest amount a column holds: NUMERIC(78, 0) on PostgreSQL (2^256 has 78 digits), as many
# zero-padded digits on SQLite.
BASE_UNITS_DIGITS = 78
# The SQLite aggregate BaseUnitsSum calls (registered on each connection by payments.apps).
SQLITE_BASE_UNITS_SUM = "cryptopay_base_units_sum"


def base_units_to_sqlite(value: int) -> str:
    """The SQLite form of an amount: its digits, zero-padded to a fixed width.

    SQLite has no exact wide number: a NUMERIC column turns an integer beyond 64 bits into an
    8-byte REAL (15 significant digits), and 1 000 USD of ETH is already 21 digits of wei. As
    fixed-width text, equality, ordering and <, > (lookups, check constraints) compare as the
    numbers do; sums go through BaseUnitsSum, never SQLite's SUM.
    """
    if value < 0:
        raise ValueError(f"base units are never negative, got {value}")
    digits = str(value)
    if len(digits) > BASE_UNITS_DIGITS:
        raise ValueError(f"{value} has more than {BASE_UNITS_DIGITS} digits")
    return digits.zfill(BASE_UNITS_DIGITS)


class BaseUnitsField(models.DecimalField):
    """An integer amount in a crypto currency's base units (satoshi, wei...), handed to Python as
    ``int`` and stored exactly: NUMERIC(78, 0) on PostgreSQL, because wei amounts outgrow a 64-bit
    integer (1 000 ETH is 10^21 wei); zero-padded text on SQLite (``base_units_to_sqlite``).
    """

    # What the type checker's Django plugin reads as the attribute's types: an int, not a Decimal.
    _pyi_private_set_type: int | Combinable
    _pyi_private_get_type: int  # type: ignore[assignment]  # stubs type every DecimalField as Decimal

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["max_digits"] = BASE_UNITS_DIGITS
        kwargs["decimal_places"] = 0
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[Any, ...]:
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("max_digits", None)
        kwargs.pop("decimal_places", None)
        return name, path, args, kwargs

    def get_internal_type(self) -> str:
        # Not "DecimalField": SQLite's backend would read every value through a float with 15
        # digits of precision (and fail on text). PostgreSQL gets its type from db_type below.
        return "BaseUnitsField"

    def db_type(self, connection: Any) -> str:
        if connection.vendor == "sqlite":
            return "text"
        return f"numeric({BASE_UNITS_DIGITS}, 0)"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> int | None:
        if value is None:
            return None
        return int(value)

    def to_python(self, value: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        decimal_value = super().to_python(value)
        return int(decimal_value) if decimal_value is not None else None

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if hasattr(value, "as_sql"):
            return value
        if connection.vendor == "sqlite":
            if not prepared:
                value = self.get_prep_value(value)
            number = self.to_python(value)
            return None if number is None else base_units_to_sqlite(number)
        if isinstance(value, int):
            value = Decimal(value)
        return super().get_db_prep_value(value, connection, prepared)


class BaseUnitsSum(models.Sum):
    """``Sum`` of a BaseUnitsField, exact on every database. SQLite's own SUM would read the
    amounts as numbers, which beyond 64 bits are floats; its replacement adds Python ints."""

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(compiler, connection, function=SQLITE_BASE_UNITS_SUM, **extra_context)


class SqliteBaseUnitsSum:
    """The SQLite aggregate behind BaseUnitsSum (sqlite3.Connection.create_aggregate's protocol)."""

    def __init__(self) -> None:
        self.total: int | None = None

    def step(self, value: Any) -> None:
        if value is not None:
            self.total = (self.total or 0) + int(value)

    def finalize(self) -> str | None:
        # Text, not an int: sqlite3 cannot hand back an integer wider than 64 bits.
        return None if self.total is None else str(self.total)


class Payment(models.Model):
    # Unique by a constraint in Meta, not unique=True: that adds, on PostgreSQL, a second index for
    # LIKE 'prefix%' that no query here makes (the admin's search is ILIKE '%…%'), written in every
    # create all the same. The same for checkout_token.
    public_id = models.CharField(max_length=32, default=new_payment_id, editable=False)
    # No index of its own: payment_merchant_mode_created leads with it (every row, every lookup by
    # merchant); one more index is one more insertion, and WAL, in every create.
    merchant = models.ForeignKey(
        Merchant, on_delete=models.PROTECT, related_name="payments", db_index=False
    )
    # NULL, not "", when absent: the unique constraint applies only to given order ids.
    order_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    description = models.CharField(max_length=500, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # False: made with a test key. Paid only on the development chain (``simulate``), seen only
    # by test keys, its events and webhooks say ``"livemode": false``.
    livemode = models.BooleanField(default=True, editable=False)

    fiat_amount = models.DecimalField(max_digits=20, decimal_places=3)
    fiat_currency = models.CharField(max_length=3, choices=FIAT_CHOICES)
    # The coin being paid in. Empty (and the amount, quote and address NULL) while the buyer has
    # not picked one of the payment's options yet (PaymentOption); set when they do.
    crypto_currency = models.CharField(max_length=8, choices=CRYPTO_CHOICES, blank=True)
    # The coins the buyer may pick from (PaymentOption rows); empty when the merchant named one
    # coin at creation, which is then the only one and needs no option rows.
    accepted_currencies = models.JSONField(default=list, blank=True)
    crypto_amount = BaseUnitsField(null=True, blank=True, help_text="Amount due, in base units.")

    # The quote the amount was computed from (its provenance).
    rate = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    rate_source = models.CharField(max_length=20, blank=True)
    rate_bid = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    rate_ask = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    rate_providers = models.JSONField(default=list, blank=True)
    rate_fetched_at = models.DateTimeField(null=True, blank=True)
    rate_age_seconds = models.PositiveIntegerField(default=0)
    # Where the checkout page sends the buyer back: after payment, and when they give up.
    redirect_url = models.URLField(max_length=2000, blank=True)
    cancel_url = models.URLField(max_length=2000, blank=True)

    checkout_token = models.CharField(max_length=64, default=new_checkout_token, editable=False)
    deposit_address = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    derivation_index = models.PositiveIntegerField(null=True, blank=True)
    # The derivation space the index counts in (payments.addresses.key_space): assets sharing one
    # wallet key share it, so they never get the same address. NULL on payments made before the
    # counter was per key; those may share an address with a payment of another currency.
    key_space = models.CharField(max_length=80, null=True, blank=True, editable=False)  # noqa: DJ001

    status = models.CharField(
        max_length=20, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    sub_status = models.CharField(
        max_length=20, choices=PaymentSubStatus.choices, default=PaymentSubStatus.NONE, blank=True
    )
    required_confirmations = models.PositiveSmallIntegerField()
    underpayment_tolerance_percent = models.DecimalField(max_digits=5, decimal_places=2)
    expires_at = models.DateTimeField()
    monitoring_until = models.DateTimeField()
    amount_received = BaseUnitsField(default=0)
    amount_confirmed = BaseUnitsField(default=0)
    event_sequence = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Named as unique=True named them, so the database keeps its own (see public_id).
            models.UniqueConstraint(fields=["public_id"], name="payments_payment_public_id_key"),
            models.UniqueConstraint(
                fields=["checkout_token"], name="payments_payment_checkout_token_1f66c4ed_uniq"
            ),
            # Per mode: an order id tried out with a test key stays free for the live order.
            models.UniqueConstraint(
                fields=["merchant", "livemode", "order_id"],
                condition=models.Q(order_id__isnull=False),
                name="payment_order_id_unique_per_merchant",
            ),
            # Payments from before the counter was per key; newer ones are covered by the per-key
            # constraint below (a wallet key and the development chain count separately).
            models.UniqueConstraint(
                fields=["merchant", "crypto_currency", "derivation_index"],
                condition=models.Q(key_space__isnull=True),
                name="payment_derivation_index_unique",
            ),
            models.UniqueConstraint(
                fields=["crypto_currency", "deposit_address"], name="payment_address_unique"
            ),
            models.UniqueConstraint(
                fields=["merchant", "key_space", "derivation_index"],
                condition=models.Q(key_space__isnull=False),
                name="payment_derivation_index_unique_per_key",
            ),
            # One address, one payment, whatever the asset: a transfer to an address must never
            # have two payments to credit (stricter than "no two open payments per chain").
            models.UniqueConstraint(
                fields=["deposit_address"],
                condition=models.Q(key_space__isnull=False),
                name="payment_address_never_shared",
            ),
            models.CheckConstraint(
                condition=models.Q(crypto_amount__gt=0), name="payment_crypto_amount_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(fiat_amount__gt=0), name="payment_fiat_amount_positive"
            ),
        ]
        indexes = [
            models.Index(
                fields=["merchant", "livemode", "-created_at", "-id"],
                name="payment_merchant_mode_created",
            ),
            models.Index(fields=["status", "expires_at"], name="payment_status_expires"),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def currency_selected(self) -> bool:
        return bool(self.crypto_currency)

    @property
    def priced_amount(self) -> int:
        """``crypto_amount`` of a payment priced in its coin; asking before a coin is picked is a
        caller's mistake (check ``currency_selected`` first)."""
        if self.crypto_amount is None:
            raise ValueError(f"payment {self.public_id} has no amount until a coin is picked")
        return self.crypto_amount


class PaymentOption(models.Model):
    """One coin a buyer may pay a payment in, priced at creation (its quote's provenance kept).

    Its deposit address is allocated only when the buyer picks it, and stays with it: switching
    back to a coin picked before shows the same address again."""

    # Indexed by payment_option_unique_currency, which leads with it.
    payment = models.ForeignKey(
        Payment, on_delete=models.CASCADE, related_name="options", db_index=False
    )
    crypto_currency = models.CharField(max_length=8, choices=CRYPTO_CHOICES)
    crypto_amount = BaseUnitsField()
    rate = models.DecimalField(max_digits=36, decimal_places=18)
    rate_source = models.CharField(max_length=20)
    rate_bid = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    rate_ask = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    rate_providers = models.JSONField(default=list, blank=True)
    rate_fetched_at = models.DateTimeField()
    rate_age_seconds = models.PositiveIntegerField(default=0)
    deposit_address = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    derivation_index = models.PositiveIntegerField(null=True, blank=True)
    key_space = models.CharField(max_length=80, null=True, blank=True)  # noqa: DJ001
    selected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["payment_id", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["payment", "crypto_currency"], name="payment_option_unique_currency"
            ),
            models.CheckConstraint(
                condition=models.Q(crypto_amount__gt=0), name="payment_option_amount_positive"
            ),
        ]
        indexes = [
            # A coin the buyer picked and then left keeps its address here only: a new address
            # is checked against these too (payments.addresses), from this index.
            models.Index(
                fields=["deposit_address"],
                name="payment_option_address",
                condition=models.Q(deposit_address__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.payment_id}:{self.crypto_currency}"


class PaymentEvent(models.Model):
    """Append-only log of everything that happened to a payment, numbered per payment."""

    class Type(models.TextChoices):
        CREATED = "payment.created", "Payment created"
        CURRENCY_SELECTED = "payment.currency_selected", "Buyer picked the coin"
        STATUS_CHANGED = "payment.status_changed", "Payment status changed"
        EXPIRED = "payment.expired", "Payment expired"
        TRANSACTION_DETECTED = "transaction.detected", "Transaction detected"
        # Another asset reached the payment's address: recorded, never credited.
        TRANSACTION_UNMATCHED = "transaction.unmatched", "Unmatched transfer to the address"

    # Indexed by event_sequence_unique, which leads with it.
    payment = models.ForeignKey(
        Payment, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    sequence = models.PositiveIntegerField()
    type = models.CharField(max_length=40, choices=Type.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["payment_id", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["payment", "sequence"], name="event_sequence_unique")
        ]

    def __str__(self) -> str:
        return f"{self.payment_id}#{self.sequence} {self.type}"


class PaymentTransaction(models.Model):
    """An on-chain output (or token transfer) paying a payment's deposit address. Recorded once."""

    class Kind(models.TextChoices):
        OUTPUT = "output", "UTXO output"
        NATIVE = "native", "Native EVM transfer"
        LOG = "log", "ERC-20 Transfer log"
        INTERNAL = "internal", "Native EVM transfer by a contract"

    class State(models.TextChoices):
        MEMPOOL = "mempool", "Unconfirmed"
        CONFIRMED = "confirmed", "In a block"
        DROPPED = "dropped", "Gone (replaced, double spent or reorged out)"

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="transactions")
    chain = models.CharField(max_length=20)
    # A transaction hash, or "internal:<block hash>:<address>" for ETH seen by a balance check.
    txid = models.CharField(max_length=160)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.OUTPUT)
    output_index = models.PositiveIntegerField(help_text="vout for outputs, log index for logs.")
    amount = BaseUnitsField()
    confirmations = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=10, choices=State.choices, default=State.MEMPOOL)
    block_hash = models.CharField(max_length=100, blank=True)
    block_height = models.PositiveBigIntegerField(null=True, blank=True)
    mined_at = models.DateTimeField(null=True, blank=True)
    replaceable = models.BooleanField(default=False, help_text="Signals RBF (BIP125).")
    spends = models.JSONField(
        default=list,
        blank=True,
        help_text="Outpoints (txid:vout) the transaction spends (UTXO): a replacement or double "
        "spend is the transaction that spends one of them instead.",
    )
    first_seen_at = models.DateTimeField(
        help_text="When the node (its mempool entry) or the watcher first saw it."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chain", "txid", "kind", "output_index"], name="transaction_output_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(amount__gt=0), name="transaction_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.chain}:{self.txid}:{self.output_index}"


class MerchantWallet(models.Model):
    """Where a merchant receives one currency: an account-level extended PUBLIC key."""

    # Indexed by wallet_unique_per_currency, which leads with it.
    merchant = models.ForeignKey(
        Merchant, on_delete=models.CASCADE, related_name="wallets", db_index=False
    )
    crypto_currency = models.CharField(max_length=8, choices=CRYPTO_CHOICES)
    extended_public_key = models.CharField(
        max_length=300,
        help_text="BIP84 xpub/zpub (or wpkh descriptor) for BTC/LTC; BIP44 xpub for ETH.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["merchant", "crypto_currency"], name="wallet_unique_per_currency"
            )
        ]

    def __str__(self) -> str:
        return f"{self.merchant} {self.crypto_currency} {self.extended_public_key[:12]}…"


class ChainCursor(models.Model):
    """How far a chain's watcher got: the next block to read, and what it last saw."""

    chain = models.CharField(max_length=20, unique=True)
    height = models.BigIntegerField(default=-1, help_text="Last processed block height.")
    block_hash = models.CharField(max_length=100, blank=True)
    tip_height = models.BigIntegerField(default=-1, help_text="The node's tip at the last poll.")
    node = models.CharField(max_length=200, blank=True, help_text="Node that answered last.")
    polled_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Everything the node knew at this time (mempool and blocks) has been recorded: "
        "a payment on this chain expires only once this is past its expiry.",
    )

    def __str__(self) -> str:
        return f"{self.chain} at {self.height}"

    @property
    def lag(self) -> int:
        return max(0, self.tip_height - self.height)


class ChainBlock(models.Model):
    """Hashes of recently processed blocks, to find where a reorg forked."""

    chain = models.CharField(max_length=20)
    height = models.BigIntegerField()
    block_hash = models.CharField(max_length=100)
    parent_hash = models.CharField(max_length=100, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "height"], name="chain_block_height_unique")
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.height} {self.block_hash[:16]}"


class AddressIndex(models.Model):
    """Next derivation index per merchant and wallet key (``key_space``), shared by every currency
    derived from that key; allocated under a row lock, never reused."""

    # Indexed by address_index_unique, which leads with it.
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, db_index=False)
    key_space = models.CharField(max_length=80)
    next_index = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["merchant", "key_space"], name="address_index_unique")
        ]

    def __str__(self) -> str:
        return f"{self.merchant_id}/{self.key_space}: next {self.next_index}"


class UnmatchedTransfer(models.Model):
    """A transfer to a watched deposit address in an asset its payment does not ask for (USDC
    sent to an ETH payment's address, ETH to a USDC one). Recorded once, credited to nothing: the
    merchant sees it and decides (refund, or mark the payment by hand)."""

    chain = models.CharField(max_length=20)
    txid = models.CharField(max_length=160)
    kind = models.CharField(max_length=10, choices=PaymentTransaction.Kind.choices)
    output_index = models.PositiveIntegerField(
        help_text="Log index for logs, call index for calls."
    )
    currency = models.CharField(max_length=8, help_text="The asset that arrived.")
    amount = BaseUnitsField(help_text="In the arriving asset's base units.")
    to_address = models.CharField(max_length=128)
    payment = models.ForeignKey(
        Payment,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="unmatched_transfers",
        help_text="The payment whose deposit address it reached.",
    )
    block_hash = models.CharField(max_length=100, blank=True)
    block_height = models.PositiveBigIntegerField(null=True, blank=True)
    seen_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chain", "txid", "kind", "output_index"], name="unmatched_transfer_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(amount__gt=0), name="unmatched_transfer_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.chain}:{self.txid}:{self.output_index} {self.currency}"


class ExchangeRateEvent(models.Model):
    """ExchangeRateUpdated: a live rate that differs from the previous one (low priority)."""

    type = "exchange_rate.updated"

    pair = models.CharField(max_length=20)
    rate = models.DecimalField(max_digits=36, decimal_places=18)
    previous_rate = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    bid = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    ask = models.DecimalField(max_digits=36, decimal_places=18, null=True, blank=True)
    providers = models.JSONField(default=list)
    fetched_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["pair", "-created_at"], name="rate_event_pair_created")]

    def __str__(self) -> str:
        return f"{self.pair} {plain_decimal(self.rate)} at {self.fetched_at:%Y-%m-%d %H:%M:%S}"
