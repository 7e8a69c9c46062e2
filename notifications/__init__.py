"""Notifications: events fanned out to browsers (Channels) and merchant webhooks.

Depends on resilience; payments depends on it, never the other way round.
"""
