"""Test support shared by the tests, the benches and the chaos scenario: real nodes, servers,
receivers, fault proxies and fake exchanges on loopback, and scratch databases."""
