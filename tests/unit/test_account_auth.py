"""vault_protocol.account_auth: the transcript every step 1 is signed over, and its check."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bkv.v1 import envelope_pb2
from vault_protocol.account_auth import (
    TRANSCRIPT_LABEL,
    AccountSigner,
    sign_request,
    transcript,
    verify_request,
)
from vault_protocol.errors import InvalidInput, SignatureError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

FLEET = bytes(range(16))
ACCOUNT = "alice@example"
TS = 1_700_000_000_123
# Our own test vector: Ed25519 with the private key bytes 00..1f (RFC 8032: deterministic).
PRIVATE = bytes(range(32))
PUBLIC = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
TRANSCRIPT_SHA256 = "6e3ea239f76a351219f56f0e98b640096728fa776b810eba3400f21101b0e415"
SIGNATURE = (
    "dba7c0d7fb81d57cb753af6cce046fec380873f05e66d123014e984b6d3ef5c7"
    "0d6e999820fc23d4fd60e3550c40b419569cbb97cc0aee966df0205197bec804"
)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _signer() -> AccountSigner:
    return AccountSigner.from_private_key(Ed25519PrivateKey.from_private_bytes(PRIVATE))


def _request() -> envelope_pb2.VaultRequest:
    return envelope_pb2.VaultRequest(
        response_key=bytes(range(100, 132)),
        recover_start=envelope_pb2.RecoverStart(ke1=bytes(range(96))),
    )


def test_the_transcript_and_signature_match_the_vector() -> None:
    request = _request()
    sign_request(request, FLEET, ACCOUNT, _signer(), TS)
    assert request.auth.public_key.hex() == PUBLIC and request.auth.ts_ms == TS
    # The transcript spelled out byte by byte: the label, the fleet and the account, each
    # length-prefixed, then the request's protobuf encoding with the signature left out.
    auth = b"\x0a\x20" + bytes.fromhex(PUBLIC) + b"\x10" + _varint(TS)
    body = (
        b"\x0a\x20" + bytes(range(100, 132))  # 1: response_key
        + b"\x22" + _varint(98) + b"\x0a\x60" + bytes(range(96))  # 4: recover_start{ke1}
        + b"\x4a" + _varint(len(auth)) + auth  # 9: auth{public_key, ts_ms}
    )  # fmt: skip
    expected = _lp(TRANSCRIPT_LABEL) + _lp(FLEET) + _lp(ACCOUNT.encode()) + body
    assert TRANSCRIPT_LABEL == b"bkv-v3 account request"
    assert transcript(request, FLEET, ACCOUNT) == expected
    assert hashlib.sha256(expected).hexdigest() == TRANSCRIPT_SHA256
    assert request.auth.signature.hex() == SIGNATURE
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(PUBLIC)).verify(
        bytes.fromhex(SIGNATURE), expected
    )
    proof = verify_request(request, FLEET, ACCOUNT)
    assert proof.public_key.hex() == PUBLIC and proof.ts_ms == TS


def _altered(change: str) -> tuple[envelope_pb2.VaultRequest, bytes, str]:
    request = _request()
    sign_request(request, FLEET, ACCOUNT, _signer(), TS)
    fleet, account = FLEET, ACCOUNT
    if change == "fleet":
        fleet = bytes(16)
    elif change == "account":
        account = "mallory"
    elif change == "response key":
        request.response_key = bytes(32)  # a frontend cannot swap the step keys either
    elif change == "operation":
        request.begin.op = envelope_pb2.Begin.Op.OP_DELETE
    elif change == "ts":
        request.auth.ts_ms = TS + 1
    elif change == "key":
        request.auth.public_key = bytes.fromhex(PUBLIC)[::-1]
    elif change == "signature bit":
        signature = bytearray(request.auth.signature)
        signature[0] ^= 1
        request.auth.signature = bytes(signature)
    elif change == "unsigned":
        request.ClearField("auth")
    elif change == "short signature":
        request.auth.signature = request.auth.signature[:63]
    elif change == "ts zero":
        request.auth.ts_ms = 0
    return request, fleet, account


@pytest.mark.parametrize(
    "change",
    ["fleet", "account", "response key", "operation", "ts", "key", "signature bit", "unsigned",
     "short signature", "ts zero"],
)  # fmt: skip
def test_any_change_fails_with_one_error(change: str) -> None:
    request, fleet, account = _altered(change)
    with pytest.raises(SignatureError) as info:
        verify_request(request, fleet, account)
    assert str(info.value) == "account signature does not verify"


def test_another_key_signs_a_valid_request_of_its_own() -> None:
    """A valid signature proves only who signed: which key may act is the node's question."""
    request = _request()
    other = AccountSigner.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    sign_request(request, FLEET, ACCOUNT, other, TS)
    assert verify_request(request, FLEET, ACCOUNT).public_key == other.public_key


def test_signing_refuses_bad_inputs() -> None:
    with pytest.raises(InvalidInput):
        sign_request(_request(), FLEET, ACCOUNT, _signer(), 0)
    with pytest.raises(InvalidInput):
        sign_request(_request(), FLEET, ACCOUNT, AccountSigner(b"short", _signer().sign), TS)
    with pytest.raises(InvalidInput):
        sign_request(_request(), FLEET, ACCOUNT, AccountSigner(bytes(32), lambda m: b"x"), TS)


def test_the_signer_never_shows_its_key() -> None:
    assert "sign" not in repr(_signer()).replace("AccountSigner", "")
