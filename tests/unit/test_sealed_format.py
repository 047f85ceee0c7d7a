"""The node's storage formats (bkv.store.v1 sealed.proto): private to the node, and stable.

sealed.proto moved from the public wire package bkv.v1 to bkv.store.v1 (issue 18). A proto package
is not part of the binary encoding, so every value written before the move must parse to the same
fields. The bytes below were serialized by the bkv.v1 code as it was before the move.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bkv.store.v1 import sealed_pb2

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# Serialized by the former bkv.v1 sealed_pb2 (commit 7988ebd) from the messages built below.
WRITTEN_BEFORE_THE_MOVE = {
    "Sealed": "0a067265636f7264120c0101010101010101010101011a050202020202",
    "Record": "08011204030303031a030404042002280a320205053807400648095001620106",
    "RegistrationTicket": "0a02070712010818292087ad4b28283003",
    "Ticket": "0a0207071201081805220209092a020a0a306338284004",
    "StoreCheckpoint": "0803104d18f403220b726f6c6c6564206261636b28e003320301ac023880d095ffbc31",
    "GroupHead": "080c10021a020b0b22070a010c12020d0d2a010e2a010f",
    "WitnessCheckpoint": "0808120210111801",
}

EXPECTED = {
    "Sealed": sealed_pb2.Sealed(key_name="record", nonce=b"\x01" * 12, ciphertext=b"\x02" * 5),
    "Record": sealed_pb2.Record(
        state=sealed_pb2.RECORD_STATE_ACTIVE,
        opaque_record=b"\x03" * 4,
        wrapped_key=b"\x04" * 3,
        attempts=2,
        max_attempts=10,
        generation=b"\x05" * 2,
        evaluations=7,
        last_redeemed=6,
        version=9,
        credential_scheme=1,
        ksf_params=b"\x06",
    ),
    "RegistrationTicket": sealed_pb2.RegistrationTicket(
        record_id=b"\x07" * 2,
        generation=b"\x08",
        base_revision=41,
        expires_at_ms=1234567,
        base_create_revision=40,
        base_version=3,
    ),
    "Ticket": sealed_pb2.Ticket(
        record_id=b"\x07" * 2,
        generation=b"\x08",
        evaluation=5,
        expected_client_mac=b"\x09" * 2,
        session_key=b"\x0a" * 2,
        expires_at_ms=99,
        create_revision=40,
        version=4,
    ),
    "StoreCheckpoint": sealed_pb2.StoreCheckpoint(
        sequence=3,
        cluster_id=77,
        high_water=500,
        alarm="rolled back",
        alarm_revision=480,
        alarmed_groups=[1, 300],
        accepted_at_ms=1700000000000,
    ),
    "GroupHead": sealed_pb2.GroupHead(
        group=12,
        version=2,
        prev=b"\x0b" * 2,
        entries=[sealed_pb2.HeadEntry(record_id=b"\x0c", digest=b"\x0d" * 2)],
        recent=[b"\x0e", b"\x0f"],
    ),
    "WitnessCheckpoint": sealed_pb2.WitnessCheckpoint(
        sequence=8, heads=[b"\x10\x11"], adopt_store=True
    ),
}


@pytest.mark.parametrize("name", sorted(WRITTEN_BEFORE_THE_MOVE))
def test_values_written_before_the_move_parse_unchanged(name: str) -> None:
    old = bytes.fromhex(WRITTEN_BEFORE_THE_MOVE[name])
    message_type = type(EXPECTED[name])
    parsed = message_type.FromString(old)
    assert parsed == EXPECTED[name]
    assert parsed.SerializeToString() == old  # and written back byte for byte
    assert message_type.DESCRIPTOR.full_name == f"bkv.store.v1.{name}"


def test_only_the_node_imports_its_storage_formats() -> None:
    importers = []
    for top in ("client", "frontend_chatd", "vault_protocol", "etcd_client"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                else:
                    continue
                if any(module.startswith("bkv.store") for module in modules):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []
    assert not list((ROOT / "protos" / "bkv" / "v1").glob("sealed*"))  # not on the public wire
