"""Payments: merchants, API keys, payments and their state machine, quotes and deposit addresses."""
