"""Exchange rates: provider adapters, live aggregation, cache levels, quotes with provenance."""

from payments.rates.quotes import (
    Quote,
    rate_quote,
    rate_quote_admissible,
    rate_quote_for_payment,
)

__all__ = ["Quote", "rate_quote", "rate_quote_admissible", "rate_quote_for_payment"]
