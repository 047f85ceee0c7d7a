"""The 256-bit backup key K, its 64-hex-digit display form, and how it travels wrapped.

* `wrap_key` / `unwrap_key`: K under a key derived from OPAQUE's `export_key`, bound to the
  account; this is what the vault stores (it never holds K itself).
* `transport_key` / `seal_transport` / `open_transport`: the node sends `wrapped_key` back at
  the end of a recovery under a key derived from the OPAQUE session key.

All sealed forms are `nonce (12 bytes) || AES-256-GCM ciphertext`; every failure to open is the
one `DecryptError`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault_protocol.errors import DecryptError, InvalidInput, KeyFormatError, ProtocolError

__all__ = [
    "KEY_LEN",
    "WRAPPED_KEY_LEN",
    "BackupKey",
    "open_transport",
    "seal_transport",
    "transport_key",
    "unwrap_key",
    "wrap_key",
]

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
WRAPPED_KEY_LEN = NONCE_LEN + KEY_LEN + TAG_LEN
WRAP_INFO = b"bkv-v1 wrapped-key"
TRANSPORT_INFO = b"bkv-v1 key-transport"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_SEPARATORS = frozenset(" -\t\r\n")
_GROUP = 4


class BackupKey:
    """A 32-byte backup key. Never shown by `repr`/`str`; compared in constant time."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise InvalidInput(f"backup key must be {KEY_LEN} bytes")
        self._key = key

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> BackupKey:
        key = rng(KEY_LEN)
        if len(key) != KEY_LEN:
            raise ProtocolError("rng returned the wrong number of bytes")
        return cls(key)

    @classmethod
    def parse(cls, text: str) -> BackupKey:
        """Parse 64 hex digits; spaces, dashes, tabs, newlines and upper case are tolerated.

        `KeyFormatError` says "invalid character at position P" (1-based, in `text`) or
        "expected 64 hex digits, got N"; it never repeats the text (it is the key).
        """
        digits: list[str] = []
        for position, char in enumerate(text, start=1):
            if char in _HEX_DIGITS:
                digits.append(char)
            elif char not in _SEPARATORS:
                raise KeyFormatError(f"invalid character at position {position}")
        if len(digits) != 2 * KEY_LEN:
            raise KeyFormatError(f"expected {2 * KEY_LEN} hex digits, got {len(digits)}")
        return cls(bytes.fromhex("".join(digits)))

    def display(self) -> str:
        """16 groups of 4 lowercase hex digits separated by single spaces."""
        digits = self._key.hex()
        return " ".join(digits[i : i + _GROUP] for i in range(0, len(digits), _GROUP))

    def __bytes__(self) -> bytes:
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackupKey):
            return NotImplemented
        # Constant time: comparing keys must not leak how many leading bytes match.
        return hmac.compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]  # a secret is not a dict key

    def __repr__(self) -> str:
        return "BackupKey(<hidden>)"

    __str__ = __repr__


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(secret)


def _seal(key: bytes, plaintext: bytes, aad: bytes, rng: Callable[[int], bytes]) -> bytes:
    nonce = rng(NONCE_LEN)
    if len(nonce) != NONCE_LEN:
        raise ProtocolError("rng returned the wrong number of bytes")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE_LEN + TAG_LEN:
        raise DecryptError("sealed key failed to open")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        raise DecryptError("sealed key failed to open") from None


def _check_secret(secret: bytes, what: str) -> None:
    if not isinstance(secret, bytes) or len(secret) < KEY_LEN:
        raise InvalidInput(f"{what} must be at least {KEY_LEN} bytes")


def _wrapping_key(export_key: bytes, account: bytes) -> bytes:
    _check_secret(export_key, "export key")
    # The account is in the KDF info and the AAD: a record moved to another account won't open.
    return _hkdf(export_key, WRAP_INFO + account)


def wrap_key(
    key: BackupKey, export_key: bytes, account_id: str, rng: Callable[[int], bytes]
) -> bytes:
    """K under HKDF-SHA256(export_key, info=b"bkv-v1 wrapped-key" || account); 60 bytes."""
    account = account_id.encode("utf-8")
    return _seal(_wrapping_key(export_key, account), bytes(key), account, rng)


def unwrap_key(wrapped: bytes, export_key: bytes, account_id: str) -> BackupKey:
    """Inverse of `wrap_key`; `DecryptError` for any failure (wrong password, account, bytes)."""
    account = account_id.encode("utf-8")
    wrapping_key = _wrapping_key(export_key, account)
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise DecryptError("sealed key failed to open")
    return BackupKey(_open(wrapping_key, wrapped, account))


def transport_key(session_key: bytes) -> bytes:
    """HKDF-SHA256(session_key, info=b"bkv-v1 key-transport"): 32-byte AES-256-GCM key."""
    _check_secret(session_key, "session key")
    return _hkdf(session_key, TRANSPORT_INFO)


def seal_transport(session_key: bytes, wrapped_key: bytes, rng: Callable[[int], bytes]) -> bytes:
    """Node side: `wrapped_key` under `transport_key(session_key)`, nonce || ciphertext."""
    return _seal(transport_key(session_key), wrapped_key, TRANSPORT_INFO, rng)


def open_transport(session_key: bytes, transported: bytes) -> bytes:
    """Client side: inverse of `seal_transport`; `DecryptError` for any failure."""
    return _open(transport_key(session_key), transported, TRANSPORT_INFO)
