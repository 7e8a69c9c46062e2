"""Chains: merchant wallets (extended public keys), address derivation, and the watchers that
follow Bitcoin-Core-style (BTC, LTC) and Ethereum JSON-RPC nodes."""
