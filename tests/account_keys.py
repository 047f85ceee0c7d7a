"""Account keys for tests and tools that build envelopes by hand: a fixed Ed25519 key per
account name (and label), and step-1 requests signed with it (vault_protocol.account_auth).

Deterministic, so that a test can sign as an account's owner without keeping its key around,
and as another key (a frontend that seals envelopes of its own) with another `label`.

>>> account_signer("alice").public_key == account_signer("alice").public_key
True
>>> account_signer("alice").public_key != account_signer("alice", "mallory").public_key
True
"""

from __future__ import annotations

import hashlib
import itertools
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkv.v1 import envelope_pb2
from vault_protocol.account_auth import AccountSigner, sign_request

# Strictly increasing timestamps in this process, from the wall clock as a client's (a test
# whose node runs on a fake clock passes its own `ts_ms`: the node refuses one far ahead).
_TS = itertools.count(time.time_ns() // 1_000_000)


def account_private_key(account_id: str, label: str = "") -> Ed25519PrivateKey:
    """The test key of `account_id` (another one for each `label`)."""
    seed = hashlib.sha256(f"bkv test account key|{label}|{account_id}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def account_signer(account_id: str, label: str = "") -> AccountSigner:
    return AccountSigner.from_private_key(account_private_key(account_id, label))


def next_ts_ms() -> int:
    return next(_TS)


def signed(
    request: envelope_pb2.VaultRequest,
    fleet_id: bytes,
    account_id: str,
    signer: AccountSigner | None = None,
    ts_ms: int | None = None,
) -> envelope_pb2.VaultRequest:
    """`request` (a step 1, its response key set) signed in place by `signer` (default: the
    account's test key) at `ts_ms` (default: the next timestamp of this process); returned."""
    sign_request(
        request,
        fleet_id,
        account_id,
        signer or account_signer(account_id),
        next_ts_ms() if ts_ms is None else ts_ms,
    )
    return request
