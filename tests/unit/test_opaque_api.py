"""The OPAQUE safe surface: what client/ and vault_node/ may import, and its typed messages."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from det_rng import det_rng

from vault_protocol import opaque
from vault_protocol.errors import InvalidInput
from vault_protocol.opaque import hazmat

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# Product code: the parts that run in production and must use only the safe surface.
PRODUCT_DIRS = ("client", "vault_node", "frontend_chatd")
SAFE = frozenset(opaque.__all__)


def _sources() -> Iterator[Path]:
    for top in PRODUCT_DIRS:
        yield from sorted((ROOT / top).rglob("*.py"))


def _opaque_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for every reach into vault_protocol.opaque: imports and `opaque.<name>`."""
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vault_protocol.opaque"):
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "vault_protocol":
                for alias in node.names:
                    if alias.name == "opaque":
                        aliases.add(alias.asname or "opaque")
            elif node.module == "vault_protocol.opaque":
                for alias in node.names:
                    yield node.lineno, alias.name
            elif node.module.startswith("vault_protocol.opaque."):
                yield node.lineno, f"from {node.module} import ..."
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield node.lineno, node.attr


def test_product_code_imports_only_the_safe_surface() -> None:
    uses = 0
    bad: list[str] = []
    for path in _sources():
        for line, what in _opaque_uses(ast.parse(path.read_text(encoding="utf-8"))):
            uses += 1
            if what not in SAFE:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert uses > 10, "the scan found (almost) no use of vault_protocol.opaque: is it broken?"
    assert not bad, "product code reaches past opaque's safe surface:\n" + "\n".join(bad)


def test_the_scan_catches_every_way_into_the_internals() -> None:
    source = (
        "import vault_protocol.opaque.hazmat\n"
        "from vault_protocol.opaque import hazmat\n"
        "from vault_protocol.opaque.hazmat import store\n"
        "from vault_protocol import opaque as o\n"
        "o.derive_dh_key_pair(b'')\n"
        "o.hazmat.recover\n"
        "o.login_start\n"
    )
    found = [what for _, what in _opaque_uses(ast.parse(source)) if what not in SAFE]
    assert found == [
        "import vault_protocol.opaque.hazmat",
        "hazmat",
        "from vault_protocol.opaque.hazmat import ...",
        "derive_dh_key_pair",
        "hazmat",
    ]


def test_the_safe_surface_holds_no_rfc_internals() -> None:
    assert all(hasattr(opaque, name) for name in opaque.__all__)
    internals = {"store", "recover", "derive_dh_key_pair", "derive_oprf_key", "build_fake_record"}
    assert not SAFE & (internals | {"derive_keys", "server_ikm", "client_ikm", "NH", "NPK"})
    assert internals <= set(hazmat.__all__)


# -- typed messages ------------------------------------------------------------------------------


IDENTITY = bytes(32)  # the identity element: never a valid key share or public key
KEYS = opaque.SoftwareServerKeys.generate(det_rng(b"keys"))
CONFIG = opaque.OpaqueConfig(b"test", opaque.IdentityKsf())


def _record() -> bytes:
    rng = det_rng(b"record")
    state, request = opaque.registration_start(b"pw", rng)
    response = opaque.server_registration_response(request, b"alice", KEYS)
    return opaque.registration_finish(state, response, CONFIG, rng)[0]


RECORD = _record()
_, KE1 = opaque.login_start(b"pw", det_rng(b"ke1"))


def test_ke1_parses_into_its_fields_and_back() -> None:
    parsed = opaque.parse_ke1(KE1)
    assert (parsed.blinded_element, parsed.client_nonce, parsed.client_public_keyshare) == (
        KE1[:32],
        KE1[32:64],
        KE1[64:],
    )
    assert parsed.to_bytes() == KE1
    assert opaque.KE1(*[KE1[i : i + 32] for i in (0, 32, 64)]) == parsed


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        KE1[:-1],
        KE1 + b"\x00",
        IDENTITY + KE1[32:],  # invalid blinded element
        KE1[:64] + IDENTITY,  # invalid client key share
        bytearray(KE1),  # not bytes
    ],
    ids=["empty", "short", "long", "bad-blinded", "bad-keyshare", "bytearray"],
)
def test_a_bad_ke1_is_invalid_input(bad: bytes) -> None:
    with pytest.raises(InvalidInput):
        opaque.parse_ke1(bad)
    with pytest.raises(InvalidInput):
        opaque.server_login_start(RECORD, b"alice", bad, KEYS, CONFIG, det_rng(b"x"))


def test_a_ke1_cannot_be_built_invalid() -> None:
    with pytest.raises(InvalidInput, match="client_nonce must be 32 bytes"):
        opaque.KE1(KE1[:32], b"short", KE1[64:])
    with pytest.raises(InvalidInput, match="invalid group element"):
        opaque.KE1(KE1[:32], KE1[32:64], IDENTITY)


def test_a_record_parses_into_its_fields_and_back() -> None:
    parsed = opaque.parse_registration_record(RECORD)
    assert parsed.client_public_key == RECORD[:32]
    assert parsed.masking_key == RECORD[32:96] and parsed.envelope == RECORD[96:]
    assert parsed.to_bytes() == RECORD and len(RECORD) == opaque.RECORD_BYTES
    assert "masking" not in repr(parsed) and RECORD.hex() not in repr(parsed)
    fake = opaque.fake_record(det_rng(b"fake"))
    assert opaque.parse_registration_record(fake).envelope == bytes(96)


@pytest.mark.parametrize(
    "bad",
    [b"", RECORD[:-1], RECORD + b"\x00", IDENTITY + RECORD[32:], bytearray(RECORD)],
    ids=["empty", "short", "long", "bad-public-key", "bytearray"],
)
def test_a_bad_record_is_invalid_input(bad: bytes) -> None:
    with pytest.raises(InvalidInput):
        opaque.parse_registration_record(bad)
    with pytest.raises(InvalidInput):
        opaque.server_login_start(bad, b"alice", KE1, KEYS, CONFIG, det_rng(b"x"))


def test_server_login_start_takes_parsed_or_wire_messages_alike() -> None:
    from_bytes = opaque.server_login_start(RECORD, b"alice", KE1, KEYS, CONFIG, det_rng(b"s"))
    from_parsed = opaque.server_login_start(
        opaque.parse_registration_record(RECORD),
        b"alice",
        opaque.parse_ke1(KE1),
        KEYS,
        CONFIG,
        det_rng(b"s"),
    )
    assert from_bytes[0] == from_parsed[0]
    assert from_bytes[1].session_key == from_parsed[1].session_key
