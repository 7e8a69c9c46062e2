"""The chaos scenario: `python -m chaos [--quick]` (``make chaos``). See chaos/scenario.py."""
