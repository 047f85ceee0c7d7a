"""RFC 9497 OPRF, mode 0x00 (OPRF), ciphersuite ristretto255-SHA512.

Implements RFC 9497 section 3.2.1 (DeriveKeyPair), section 3.3.1 (Blind, BlindEvaluate,
Finalize) and the ristretto255-SHA512 suite of section 4.1, with
contextString = "OPRFV1-" || I2OSP(0x00, 1) || "-ristretto255-SHA512".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from vault_protocol import ristretto
from vault_protocol.errors import InvalidInput
from vault_protocol.ristretto import Element, Scalar

MODE_OPRF = 0x00
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-ristretto255-SHA512"
HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
HASH_TO_SCALAR_DST = b"HashToScalar-" + CONTEXT_STRING
DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING

OUTPUT_BYTES = 64
SEED_BYTES = 32
_MAX_LEN = 0xFFFF


def _i2osp2(value: int, what: str) -> bytes:
    if value > _MAX_LEN:
        raise InvalidInput(f"{what} is longer than 65535 bytes")
    return value.to_bytes(2, "big")


def derive_key_pair(seed: bytes, info: bytes) -> tuple[Scalar, Element]:
    """RFC 9497 section 3.2.1 DeriveKeyPair: deterministic (sk, pk) from a 32-byte seed."""
    if len(seed) != SEED_BYTES:
        raise InvalidInput("OPRF key seed must be 32 bytes")
    derive_input = seed + _i2osp2(len(info), "info") + info
    for counter in range(256):
        sk = ristretto.hash_to_scalar(derive_input + bytes([counter]), DERIVE_KEY_PAIR_DST)
        if any(sk):
            return sk, ristretto.base_mult(sk)
    # Probability about 2^-64000: unreachable in practice, kept because the RFC requires it.
    raise InvalidInput("DeriveKeyPair failed for this seed")


def blind_with(input_: bytes, blind: Scalar) -> Element:
    """RFC 9497 Blind with a caller-chosen blind (used by `blind` and by tests)."""
    _i2osp2(len(input_), "OPRF input")
    input_element = ristretto.hash_to_group(input_, HASH_TO_GROUP_DST)
    return ristretto.scalar_mult(blind, input_element)


def blind(input_: bytes, rng: Callable[[int], bytes]) -> tuple[Scalar, Element]:
    """RFC 9497 Blind: returns (blind, blinded_element); the blind is a fresh random scalar."""
    blind_scalar = ristretto.random_scalar(rng)
    return blind_scalar, blind_with(input_, blind_scalar)


def blind_evaluate(sk: Scalar, blinded_element: bytes) -> Element:
    """RFC 9497 BlindEvaluate: sk * blinded_element; the element is validated (InvalidInput)."""
    # Security: a malicious client's identity or non-canonical element is refused before use.
    element = ristretto.decode_element(blinded_element)
    return ristretto.scalar_mult(sk, element)


def finalize(input_: bytes, blind_scalar: Scalar, evaluated_element: bytes) -> bytes:
    """RFC 9497 Finalize: H(len(input) || input || len(N) || N || "Finalize"), 64 bytes."""
    element = ristretto.decode_element(evaluated_element)
    unblinded = ristretto.scalar_mult(ristretto.scalar_inverse(blind_scalar), element)
    hash_input = (
        _i2osp2(len(input_), "OPRF input")
        + input_
        + _i2osp2(len(unblinded), "element")
        + unblinded
        + b"Finalize"
    )
    return hashlib.sha512(hash_input).digest()
