"""The account key's signature on every step-1 request (issue 17): the vault checks the account
itself instead of taking the frontend's word for it.

The client signs each step-1 `VaultRequest` (register start, recover start, begin) with its
Ed25519 account key; the node verifies it and compares the key with the one its sealed record
is bound to (vault_node.transitions). What is signed is `transcript(...)`, one pure function:

    u16 len ‖ "bkv-v3 account request" ‖ u16 len ‖ fleet id ‖ u16 len ‖ account id (UTF-8) ‖
    the request's deterministic protobuf serialization with `auth.signature` empty

so the signature covers the fleet, the account, the operation and its whole content, the
response key (hence both steps' keys: step 2 needs no signature of its own) and `auth.ts_ms`
and `auth.public_key`. The signer is injected (a callable), as the rest of this package takes
its randomness: no key storage, no clock here.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> signer = AccountSigner.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes(32)))
>>> request = envelope_pb2.VaultRequest(response_key=bytes(32), begin=envelope_pb2.Begin(op=1))
>>> sign_request(request, bytes(16), "alice", signer, ts_ms=1_000)
>>> proof = verify_request(request, bytes(16), "alice")
>>> (proof.public_key == signer.public_key, proof.ts_ms)
(True, 1000)
>>> verify_request(request, bytes(16), "mallory")
Traceback (most recent call last):
...
vault_protocol.errors.SignatureError: account signature does not verify
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bkv.v1 import envelope_pb2
from vault_protocol.errors import InvalidInput, SignatureError

__all__ = [
    "PUBLIC_KEY_LEN",
    "SIGNATURE_LEN",
    "TRANSCRIPT_LABEL",
    "AccountProof",
    "AccountSigner",
    "sign_request",
    "transcript",
    "verify_request",
]

TRANSCRIPT_LABEL = b"bkv-v3 account request"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
MAX_TS_MS = (1 << 63) - 1  # ts_ms travels as uint64; the record and tickets keep it as int64


def _length_prefixed(data: bytes) -> bytes:
    if len(data) >= 1 << 16:
        raise InvalidInput("transcript field too long")
    return len(data).to_bytes(2, "big") + data


def transcript(request: envelope_pb2.VaultRequest, fleet_id: bytes, account_id: str) -> bytes:
    """The bytes the account key signs for `request` (its `auth.signature` left out).

    Security: the label keeps these signatures apart from the login's ("bkv-v1 login" ‖
    challenge) and from any other use of the key; the fleet and account ids stop a signed
    request from being replayed to another fleet or for another account.
    """
    unsigned = envelope_pb2.VaultRequest()
    unsigned.CopyFrom(request)
    unsigned.auth.signature = b""
    return (
        _length_prefixed(TRANSCRIPT_LABEL)
        + _length_prefixed(fleet_id)
        + _length_prefixed(account_id.encode("utf-8"))
        + bytes(unsigned.SerializeToString(deterministic=True))
    )


@dataclass(frozen=True)
class AccountSigner:
    """An account's raw Ed25519 public key and a callable that signs bytes with its private key
    (which never leaves the caller: a file, a keystore, a hardware key)."""

    public_key: bytes
    sign: Callable[[bytes], bytes] = field(repr=False)

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey) -> AccountSigner:
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(public, key.sign)


@dataclass(frozen=True)
class AccountProof:
    """What a verified signature proves: the holder of `public_key` asked this at `ts_ms` (its
    own clock, unchecked here: the node compares it with its clock and the record)."""

    public_key: bytes
    ts_ms: int


def sign_request(
    request: envelope_pb2.VaultRequest,
    fleet_id: bytes,
    account_id: str,
    signer: AccountSigner,
    ts_ms: int,
) -> None:
    """Set `request.auth`: the signer's public key, `ts_ms` and the signature over
    `transcript` (in place, so that the caller then seals the request)."""
    if len(signer.public_key) != PUBLIC_KEY_LEN:
        raise InvalidInput(f"account public key must be {PUBLIC_KEY_LEN} bytes")
    if not 0 < ts_ms <= MAX_TS_MS:
        raise InvalidInput("ts_ms out of range")
    request.auth.public_key = signer.public_key
    request.auth.ts_ms = ts_ms
    signature = signer.sign(transcript(request, fleet_id, account_id))
    if len(signature) != SIGNATURE_LEN:
        raise InvalidInput(f"an Ed25519 signature is {SIGNATURE_LEN} bytes")
    request.auth.signature = signature


def verify_request(
    request: envelope_pb2.VaultRequest, fleet_id: bytes, account_id: str
) -> AccountProof:
    """Check `request.auth`; `SignatureError` for every failure (missing, malformed, wrong
    key, altered request, other fleet or account), one error whatever the cause."""
    auth = request.auth
    if (
        not request.HasField("auth")
        or len(auth.public_key) != PUBLIC_KEY_LEN
        or len(auth.signature) != SIGNATURE_LEN
        or not 0 < auth.ts_ms <= MAX_TS_MS
    ):
        raise SignatureError("account signature does not verify")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(auth.public_key))
        key.verify(bytes(auth.signature), transcript(request, fleet_id, account_id))
    except (InvalidSignature, ValueError, InvalidInput):
        raise SignatureError("account signature does not verify") from None
    return AccountProof(bytes(auth.public_key), int(auth.ts_ms))
