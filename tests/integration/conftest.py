"""Integration tier: the shared `cluster` / `healthy_cluster` fixtures are in tests/conftest.py;
`wire` (channels to the frontends and, with a frontend's client certificate, to the vault nodes)
comes from tests/integration/bad_input_wire.py."""

from bad_input_wire import wire

__all__ = ["wire"]
