"""The ristretto255 prime-order group over libsodium (via `rbcl`), with strict decoding.

Implements:

* RFC 9496 section 4.3.1 (Decode) strictness on top of libsodium: the bundled libsodium accepts
  encodings with the high bit set, and it accepts the identity; both are rejected here.
* RFC 9496 section 4.3.4 (element derivation from 64 uniform bytes) through
  `crypto_core_ristretto255_from_hash`.
* RFC 9380 section 5.3.1 `expand_message_xmd` with SHA-512 (b_in_bytes = 64, s_in_bytes = 128),
  and the ristretto255 HashToGroup / HashToScalar of RFC 9497 section 4.1.

Elements and scalars are plain 32-byte `bytes`: an `Element` is a canonical encoding of a
non-identity group element, a `Scalar` a little-endian integer in [1, L). Every malformed or
out-of-range input raises `InvalidInput`; no other exception leaves this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TypeAlias

import rbcl

from vault_protocol.errors import InvalidInput


def _remove_rbcl_copy() -> None:
    """Delete the copy of libsodium that importing rbcl (1.1.2) left in the temporary directory.

    rbcl writes its bundled libsodium (2.8 MB) to a new temporary file at every import and never
    removes it, so every node, frontend and client process left one behind: supervised restarts
    and test runs filled /tmp. Once loaded the library stays mapped, so the file can go. Only a
    file in the temporary directory is touched, never one of an installed package.
    """
    path = getattr(sys.modules.get("rbcl._sodium"), "lib_path", None)
    if isinstance(path, str) and os.path.dirname(path) == tempfile.gettempdir():
        with contextlib.suppress(OSError):
            os.unlink(path)


_remove_rbcl_copy()  # the one side effect of this module: undoing rbcl's at import

Element: TypeAlias = bytes
Scalar: TypeAlias = bytes

ELEMENT_BYTES = 32
SCALAR_BYTES = 32
HASH_BYTES = 64

# Group order L of ristretto255 (RFC 9496 section 4) and the field prime p = 2^255 - 19.
ORDER = 2**252 + 27742317777372353535851937790883648493
_FIELD_PRIME = 2**255 - 19
_IDENTITY = bytes(ELEMENT_BYTES)
_MAX_SCALAR_TRIES = 128

_SHA512_BLOCK = 128
_SHA512_OUT = 64


def expand_message_xmd_sha512(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 expand_message_xmd with H = SHA-512."""
    if length <= 0 or length > 255 * _SHA512_OUT or length > 0xFFFF:
        raise InvalidInput("expand_message_xmd: requested length out of range")
    if len(dst) > 255:
        # RFC 9380 section 5.3.3: oversized DSTs are hashed down.
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-length // _SHA512_OUT)
    dst_prime = dst + bytes([len(dst)])
    z_pad = bytes(_SHA512_BLOCK)
    l_i_b_str = length.to_bytes(2, "big")
    b_0 = hashlib.sha512(z_pad + msg + l_i_b_str + b"\x00" + dst_prime).digest()
    b_i = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    out = [b_i]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, b_i, strict=True))
        b_i = hashlib.sha512(mixed + bytes([i]) + dst_prime).digest()
        out.append(b_i)
    return b"".join(out)[:length]


def _is_canonical_encoding(data: bytes) -> bool:
    """RFC 9496 section 4.3.1 step 1: s < p, s non-negative (even), high bit clear."""
    if data[31] & 0x80:
        return False
    s = int.from_bytes(data, "little")
    return s < _FIELD_PRIME and s % 2 == 0


def decode_element(data: bytes) -> Element:
    """`data` if it canonically encodes a non-identity element, else InvalidInput."""
    if not isinstance(data, bytes) or len(data) != ELEMENT_BYTES:
        raise InvalidInput("group element must be 32 bytes")
    # Security: non-canonical encodings give an attacker several names for one element.
    if not _is_canonical_encoding(data):
        raise InvalidInput("group element encoding is not canonical")
    # Security: the identity would zero every DH share or OPRF evaluation it touches.
    if data == _IDENTITY:
        raise InvalidInput("group element is the identity")
    if not rbcl.crypto_core_ristretto255_is_valid_point(data):
        raise InvalidInput("bytes do not encode a ristretto255 element")
    return data


def decode_scalar(data: bytes) -> Scalar:
    """`data` if it is a canonical non-zero scalar (little-endian, < L), else InvalidInput."""
    if not isinstance(data, bytes) or len(data) != SCALAR_BYTES:
        raise InvalidInput("scalar must be 32 bytes")
    value = int.from_bytes(data, "little")
    if value >= ORDER:
        raise InvalidInput("scalar is not reduced modulo the group order")
    if value == 0:
        raise InvalidInput("scalar is zero")
    return data


def hash_to_group(msg: bytes, dst: bytes) -> Element:
    """RFC 9497 section 4.1 HashToGroup: expand_message_xmd (64 bytes), RFC 9496 derivation."""
    uniform = expand_message_xmd_sha512(msg, dst, HASH_BYTES)
    element: bytes = rbcl.crypto_core_ristretto255_from_hash(uniform)
    if element == _IDENTITY:
        raise InvalidInput("input hashes to the identity element")
    return element


def hash_to_scalar(msg: bytes, dst: bytes) -> bytes:
    """RFC 9497 section 4.1 HashToScalar: 64 uniform bytes reduced modulo L (may be zero)."""
    uniform = expand_message_xmd_sha512(msg, dst, HASH_BYTES)
    reduced: bytes = rbcl.crypto_core_ristretto255_scalar_reduce(uniform)
    return reduced


def scalar_mult(scalar: Scalar, element: Element) -> Element:
    """scalar * element; both are validated first."""
    decode_scalar(scalar)
    decode_element(element)
    try:
        product: bytes = rbcl.crypto_scalarmult_ristretto255(scalar, element)
    except RuntimeError as exc:  # libsodium refuses an identity result
        raise InvalidInput("scalar multiplication gave the identity") from exc
    return product


def base_mult(scalar: Scalar) -> Element:
    """scalar * generator (ScalarMultGen)."""
    decode_scalar(scalar)
    try:
        product: bytes = rbcl.crypto_scalarmult_ristretto255_base(scalar)
    except RuntimeError as exc:
        raise InvalidInput("scalar multiplication gave the identity") from exc
    return product


def scalar_inverse(scalar: Scalar) -> Scalar:
    """Multiplicative inverse modulo L."""
    decode_scalar(scalar)
    inverse: bytes = rbcl.crypto_core_ristretto255_scalar_invert(scalar)
    return inverse


def random_scalar(rng: Callable[[int], bytes]) -> Scalar:
    """A uniform scalar in [1, L) by rejection sampling over 253-bit draws of `rng(32)`.

    A canonical scalar fed by the rng comes back unchanged, which lets tests inject a blind.
    """
    for _ in range(_MAX_SCALAR_TRIES):
        draw = rng(SCALAR_BYTES)
        if len(draw) != SCALAR_BYTES:
            raise InvalidInput("rng returned the wrong number of bytes")
        candidate = bytearray(draw)
        candidate[31] &= 0x1F  # 2^253 > L: about half the draws are accepted
        value = int.from_bytes(candidate, "little")
        # Security: rejection (not reduction of 32 bytes) keeps the scalar uniform.
        if 0 < value < ORDER:
            return bytes(candidate)
    raise InvalidInput("rng failed to produce a scalar")
