"""The fuzz tier's fixtures: the same full cluster as tests/integration/conftest.py, and the wire.

The session `cluster` fixture repeats tests/integration/conftest.py's (a `pytest_plugins` entry in
the root conftest would let both tiers share one cluster per session). The wire helpers live in
tests/integration/bad_input_wire.py, shared with the bad-input integration tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from bad_input_wire import Account, Wire, register_account


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="bkv-fuzz-cluster-"))
    c = Cluster(root / "cluster")
    try:
        c.up(fsync=False)
        yield c
    finally:
        try:
            if c.exists():
                c.down()
        finally:
            if os.environ.get("BKV_KEEP_CLUSTER") != "1":
                shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def wire(cluster: Cluster) -> Iterator[Wire]:
    w = Wire(cluster)
    yield w
    w.close()


@pytest.fixture
def account(wire: Wire, tmp_path: Path) -> Account:
    """A freshly registered account (default 10 guesses) whose session the fuzz cases use."""
    return register_account(wire, tmp_path, "fuzz")
