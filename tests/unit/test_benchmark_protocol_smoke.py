"""The protocol benchmark runs and writes its JSON (a smoke run: no timing is asserted)."""

import json
from pathlib import Path

import pytest

from bkv_bench import protocol_cost as protocol

pytestmark = pytest.mark.unit


def test_protocol_benchmark_writes_json(tmp_path: Path) -> None:
    assert protocol.main(["--seconds", "0.01", "--file-mib", "1", "--out", str(tmp_path)]) == 0
    (report_file,) = tmp_path.glob("*/protocol.json")
    report = json.loads(report_file.read_text())
    # Every recovery performs the OPRF evaluation, the server key share and three 3DH products.
    assert report["recovery"]["ristretto_mults_per_recovery"] >= 5
    assert set(report["ops"]) >= {
        "oprf_blind_evaluate",
        "server_ke2",
        "envelope_open",
        "account_signature_verify",
    }
    assert report["backup_file"]["encrypt_mb_per_s"] > 0
