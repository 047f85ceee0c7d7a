"""Integration tier: the shared `cluster` / `healthy_cluster` fixtures are in tests/conftest.py."""
