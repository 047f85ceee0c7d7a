"""The fuzz tier's fixtures: the wire to the shared session cluster (tests/conftest.py).

The session `cluster` fixture is tests/conftest.py's, shared by every tier. The wire helpers live
in tests/integration/bad_input_wire.py, shared with the bad-input integration tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from bad_input_wire import Account, Wire, register_account, wire

__all__ = ["account", "wire"]


@pytest.fixture
def account(wire: Wire, tmp_path: Path) -> Account:
    """A freshly registered account (default 10 guesses) whose session the fuzz cases use."""
    return register_account(wire, tmp_path, "fuzz")
