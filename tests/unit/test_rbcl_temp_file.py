"""Importing the ristretto255 module leaves nothing in the temporary directory.

rbcl 1.1.2 writes its bundled libsodium to a fresh temporary file at every import and never
deletes it (2.8 MB per process); `vault_protocol.ristretto` removes it once it is loaded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

PROBE = """
from vault_protocol import ristretto
g = ristretto.base_mult(ristretto.hash_to_scalar(b"x", b"dst"))
assert ristretto.scalar_mult(ristretto.hash_to_scalar(b"y", b"dst"), g) != g
print("ok")
"""


def test_a_process_that_uses_ristretto255_leaves_no_library_copy(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    root = Path(__file__).resolve().parents[2]
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, cwd=root, capture_output=True, timeout=50
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().strip() == "ok"  # the library works after its file is gone
    assert list(temp.iterdir()) == []
