"""Resilience mechanisms that know nothing about payments: clocks, breakers, caches, idempotency."""
