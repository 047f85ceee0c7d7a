"""The key ceremony over real SoftHSM tokens: what it writes, what it refuses, what it leaves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hsm_fixtures import TokenProbe

from vault_node.ceremony import (
    FLEET_JSON,
    FLEET_PUB,
    CeremonyError,
    FleetPublic,
    load_fleet_public,
    run_ceremony,
)
from vault_node.ceremony_cli import spec_args
from vault_node.hsm import FLEET_LABELS
from vault_node.softhsm import TokenSpec, create_token

pytestmark = pytest.mark.integration

FIXED_NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture()
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bkv-test-ceremony-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tokens(base: Path, names: list[str]) -> list[TokenSpec]:
    return [create_token(base / name, name) for name in names]


def _ceremony(base: Path, specs: list[TokenSpec], out: str = "fleet") -> FleetPublic:
    work = base / "work"
    work.mkdir(exist_ok=True)
    return run_ceremony(specs, base / out, now=lambda: FIXED_NOW, work_root=work)


def test_three_nodes_share_one_fleet(base: Path) -> None:
    specs = _tokens(base, ["dc-a-node-1", "dc-b-node-1", "dc-c-node-1"])
    fleet = _ceremony(base, specs)

    assert len(fleet.public_key) == 65 and fleet.public_key[0] == 4
    assert fleet.fleet_id == hashlib.sha256(fleet.public_key).digest()[:16]
    meta = json.loads((base / "fleet" / FLEET_JSON).read_text())
    assert meta["fleet_id"] == fleet.fleet_id.hex()
    assert meta["created"] == "2030-01-02T03:04:05+00:00"
    pem_key = serialization.load_pem_public_key((base / "fleet" / FLEET_PUB).read_bytes())
    assert isinstance(pem_key, ec.EllipticCurvePublicKey)
    assert (
        pem_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        == fleet.public_key
    )
    assert load_fleet_public(base / "fleet") == fleet
    # The ceremony token and the exchanged blobs are gone.
    assert list((base / "work").iterdir()) == []

    ephemeral = ec.generate_private_key(ec.SECP256R1())
    peer = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    expected_dh = ephemeral.exchange(ec.ECDH(), pem_key)
    nonce = os.urandom(12)
    sealed_by_first: bytes | None = None
    macs: set[bytes] = set()
    for spec in specs:
        with TokenProbe(spec) as probe:
            for label in FLEET_LABELS:
                attributes = probe.call("key_attributes", label=label)
                assert (attributes["SENSITIVE"], attributes["EXTRACTABLE"]) == (True, False)
            assert probe.call("ecdh", peer_point=peer) == expected_dh
            assert probe.call("kem_public_key") == fleet.public_key
            macs.add(probe.call("hmac_sha256", label="id_mac", data=b"account-1"))
            if sealed_by_first is None:
                sealed_by_first = probe.call(
                    "aes_gcm_seal", label="record", nonce=nonce, plaintext=b"rec", aad=b"a"
                )
            else:
                opened = probe.call(
                    "aes_gcm_open",
                    label="record",
                    nonce=nonce,
                    ciphertext=sealed_by_first,
                    aad=b"a",
                )
                assert opened == b"rec"
    assert len(macs) == 1


def test_two_ceremonies_make_different_fleets(base: Path) -> None:
    first = _ceremony(base, _tokens(base, ["a1"]), out="fleet1")
    second = _ceremony(base, _tokens(base, ["b1"]), out="fleet2")
    assert first.public_key != second.public_key
    assert first.fleet_id != second.fleet_id


def test_rerun_on_provisioned_token_fails_clearly(base: Path) -> None:
    specs = _tokens(base, ["n1", "n2"])
    _ceremony(base, specs)
    with pytest.raises(CeremonyError) as raised:
        _ceremony(base, specs, out="fleet-again")
    assert raised.value.step == "node-transport"
    assert raised.value.node in {"n1", "n2"}
    assert "already provisioned" in str(raised.value)
    assert not (base / "fleet-again").exists()
    assert list((base / "work").iterdir()) == []


def test_refuses_to_overwrite_published_fleet(base: Path) -> None:
    specs = _tokens(base, ["n1"])
    (base / "fleet").mkdir()
    (base / "fleet" / FLEET_PUB).write_text("pinned elsewhere")
    with pytest.raises(CeremonyError, match="already exists"):
        _ceremony(base, specs)
    with TokenProbe(specs[0]) as probe:  # nothing was touched
        assert probe.call("labels") == []


def test_rejects_bad_node_lists(base: Path) -> None:
    with pytest.raises(CeremonyError, match="no node tokens"):
        _ceremony(base, [])
    spec = _tokens(base, ["n1"])[0]
    with pytest.raises(CeremonyError, match="given twice"):
        _ceremony(base, [spec, spec])


def test_failure_names_node_and_step_and_cleans_up(base: Path) -> None:
    good, bad = _tokens(base, ["good", "bad"])
    bad.pin_file.write_text("wrong-pin\n")
    with pytest.raises(CeremonyError) as raised:
        _ceremony(base, [good, bad])
    assert (raised.value.node, raised.value.step) == ("bad", "node-transport")
    assert "login" in raised.value.reason
    assert "wrong-pin" not in str(raised.value)
    assert list((base / "work").iterdir()) == []
    assert not (base / "fleet").exists()
    with TokenProbe(good) as probe:
        assert probe.call("missing_fleet_keys") == list(FLEET_LABELS)


def _cli(step: str, spec: TokenSpec, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault_node.ceremony_cli", step, *spec_args(spec), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_unwrap_of_a_tampered_blob_leaves_no_keys(base: Path) -> None:
    spec = _tokens(base, ["n1"])[0]
    point_file = base / "point.json"
    assert _cli("node-transport", spec, "--out", str(point_file)).returncode == 0
    node_point = json.loads(point_file.read_text())["transport_point"]
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_point = attacker.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    blob = {
        "version": 1,
        "token_label": "n1",
        "ceremony_point": attacker_point.hex(),
        "node_point": node_point,
        "kem_point": attacker_point.hex(),
        "keys": {label: os.urandom(48).hex() for label in FLEET_LABELS},
    }
    blob_file = base / "blob.json"
    blob_file.write_text(json.dumps(blob))
    result = _cli("node-unwrap", spec, "--in", str(blob_file))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    with TokenProbe(spec) as probe:
        assert probe.call("missing_fleet_keys") == list(FLEET_LABELS)
        assert probe.call("labels") == ["PRIVATE_KEY:node-transport", "PUBLIC_KEY:node-transport"]


def test_node_unwrap_rejects_a_blob_for_another_transport_key(base: Path) -> None:
    spec = _tokens(base, ["n1"])[0]
    assert _cli("node-transport", spec, "--out", str(base / "p.json")).returncode == 0
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_point = other.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ).hex()
    blob = {
        "version": 1,
        "token_label": "n1",
        "ceremony_point": other_point,
        "node_point": other_point,
        "kem_point": other_point,
        "keys": {label: "00" for label in FLEET_LABELS},
    }
    (base / "blob.json").write_text(json.dumps(blob))
    result = _cli("node-unwrap", spec, "--in", str(base / "blob.json"))
    assert result.returncode == 1
    assert "another transport key" in result.stderr
