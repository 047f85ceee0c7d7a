"""RFC 9497 ristretto255-SHA512 mode-0 vectors, plus RFC 9380 / RFC 9496 primitive vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import rbcl
from rfc_vectors import load_vectors

from vault_protocol import oprf, ristretto

pytestmark = pytest.mark.unit

OPRF_FILE = "rfc9497-oprf-vectors.json"
SUITE = "ristretto255-SHA512"
MODE = 0


def _suites() -> list[dict[str, Any]]:
    ours = []
    for suite in load_vectors(OPRF_FILE):
        if suite["identifier"] != SUITE or suite["mode"] != MODE:
            continue  # other groups (decaf448, P-256...) and VOPRF/POPRF modes: out of scope
        ours.append(suite)
    return ours


SUITES = _suites()
CASES = [
    pytest.param(suite, vector, id=f"{SUITE}-mode{MODE}-vector{i + 1}-batch{vector['Batch']}")
    for suite in SUITES
    for i, vector in enumerate(suite["vectors"])
]


def _items(vector: dict[str, Any], name: str) -> list[bytes]:
    """Batched vectors join elements with commas; a batch of one is a single hex string."""
    return [bytes.fromhex(part) for part in vector[name].split(",")]


def _feed(value: bytes) -> Callable[[int], bytes]:
    """An rng that returns `value` once (the vector's blind), checking the requested size."""
    pending = [value]

    def rng(n: int) -> bytes:
        assert len(pending[0]) == n
        return pending.pop()

    return rng


def test_vector_file_has_our_suite() -> None:
    assert len(SUITES) == 1
    assert len(CASES) >= 2


def test_context_and_dst_match_vector() -> None:
    assert oprf.HASH_TO_GROUP_DST == bytes.fromhex(SUITES[0]["groupDST"])
    assert oprf.CONTEXT_STRING == b"OPRFV1-\x00-ristretto255-SHA512"


def test_derive_key_pair() -> None:
    suite = SUITES[0]
    sk, pk = oprf.derive_key_pair(bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]))
    assert sk.hex() == suite["skSm"]
    assert pk == ristretto.base_mult(sk)


@pytest.mark.parametrize(("suite", "vector"), CASES)
def test_oprf_vector(suite: dict[str, Any], vector: dict[str, Any]) -> None:
    sk, _ = oprf.derive_key_pair(bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]))
    inputs = _items(vector, "Input")
    blinds = _items(vector, "Blind")
    blinded = _items(vector, "BlindedElement")
    evaluated = _items(vector, "EvaluationElement")
    outputs = _items(vector, "Output")
    assert len(inputs) == vector["Batch"]
    for i, input_ in enumerate(inputs):
        blind, blinded_element = oprf.blind(input_, _feed(blinds[i]))
        assert blind == blinds[i]
        assert blinded_element == blinded[i]
        evaluated_element = oprf.blind_evaluate(sk, blinded_element)
        assert evaluated_element == evaluated[i]
        assert oprf.finalize(input_, blind, evaluated_element) == outputs[i]


def test_finalize_depends_on_input() -> None:
    suite = SUITES[0]
    vector = suite["vectors"][0]
    output = oprf.finalize(
        b"\x01", bytes.fromhex(vector["Blind"]), bytes.fromhex(vector["EvaluationElement"])
    )
    assert output.hex() != vector["Output"]


# RFC 9380 appendix K.3, expand_message_xmd(SHA-512), DST "QUUX-V01-CS02-with-expander-SHA512-256".
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (b"abcdef0123456789", 0x20, "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58"),
    (
        b"",
        0x80,
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    ),
]


@pytest.mark.parametrize(("msg", "length", "expected"), XMD_VECTORS)
def test_expand_message_xmd_sha512_rfc9380(msg: bytes, length: int, expected: str) -> None:
    assert ristretto.expand_message_xmd_sha512(msg, XMD_DST, length).hex() == expected


def test_base_point_rfc9496() -> None:
    # RFC 9496 appendix A.1: the generator's encoding.
    one = (1).to_bytes(32, "little")
    expected = "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76"
    assert ristretto.base_mult(one).hex() == expected


def test_element_derivation_rfc9496() -> None:
    # RFC 9496 appendix A.3: element derivation from 64 uniform bytes (libsodium's from_hash).
    uniform = bytes.fromhex(
        "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c1"
        "4d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6"
    )
    expected = "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46"
    assert rbcl.crypto_core_ristretto255_from_hash(uniform).hex() == expected
