"""The frontends' account binding in etcd: which Ed25519 keys may log in as an account.

`/bkv/v1/accounts/<account_id>` holds one raw 32-byte public key (bound at the first login,
moved by a key change that the bound key signs), or two: the bound key followed by a key the
operator added after a key loss (`bkv-cluster rebind-account`). Both may log in then, so the
old device can still reach the vault during the rebind's delay and cancel it there; only the
first may change keys. The vault checks its own binding (the record's account key) besides:
this one only decides who may relay.

>>> decode_binding(encode_binding([b"a" * 32, b"b" * 32])) == (b"a" * 32, b"b" * 32)
True
>>> decode_binding(b"short")
()
"""

from __future__ import annotations

from collections.abc import Sequence

ACCOUNTS_PREFIX = "/bkv/v1/accounts/"
PUBLIC_KEY_BYTES = 32
MAX_BOUND_KEYS = 2


def binding_key(account_id: str) -> bytes:
    """The etcd key of an account's binding (the id checked by the caller)."""
    return (ACCOUNTS_PREFIX + account_id).encode()


def encode_binding(keys: Sequence[bytes]) -> bytes:
    """The stored value for `keys` (the bound key first; one or two, 32 bytes each)."""
    if not 1 <= len(keys) <= MAX_BOUND_KEYS or any(len(k) != PUBLIC_KEY_BYTES for k in keys):
        raise ValueError("an account binding is one or two raw 32-byte Ed25519 keys")
    return b"".join(keys)


def decode_binding(value: bytes) -> tuple[bytes, ...]:
    """The keys of a stored value, the bound one first; () for a malformed value (which lets
    nobody in)."""
    if len(value) not in (PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES * MAX_BOUND_KEYS):
        return ()
    return tuple(value[i : i + PUBLIC_KEY_BYTES] for i in range(0, len(value), PUBLIC_KEY_BYTES))
