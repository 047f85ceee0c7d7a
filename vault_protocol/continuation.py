"""Protocol 3's second step: one HPKE open per two-step operation.

Step 1 is an HPKE `SealedEnvelope` (vault_protocol.envelope) whose plaintext carries a fresh
32-byte `response_key`. Both sides expand it (`StepKeys.derive`, HKDF-SHA256, one label per
purpose) into the step-1 answer key, the client's step-2 request key and the step-2 answer key.
The node puts the last two into the sealed ticket of its step-1 answer; the client seals its
step-2 request under the request key as a `ContinuedEnvelope` carrying that ticket. The node
opens the ticket in its token (one AES-GCM operation), and the request in software: no second
ECDH in the token.

The request's AAD binds the protocol label and version, the fleet id, the account id and
SHA-256 of the ticket, so a frontend that swaps accounts or tickets gets a failed open.

>>> keys = StepKeys.derive(bytes(32))
>>> len({keys.answer1, keys.request2, keys.answer2})
3
>>> fleet_id, ticket = bytes(16), b"t" * 10
>>> request = envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest())
>>> blob = seal_continued(fleet_id, "alice", ticket, keys.request2, request, os.urandom)
>>> sealed = parse_continued(blob, fleet_id)
>>> open_continued(sealed, "alice", fleet_id, keys.request2).WhichOneof("op")
'status'
"""

from __future__ import annotations

import hashlib
import hmac
import os  # noqa: F401 - used by the doctest
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bkv.v1 import envelope_pb2
from vault_protocol.envelope import (
    BUCKETS,
    MAX_ENVELOPE_BYTES,
    PROTOCOL_VERSION,
    RESPONSE_KEY_LEN,
    check_header,
    envelope_info,
    pad,
    parse_message,
    unpad,
)
from vault_protocol.errors import DecryptError, InvalidInput, ProtocolError

__all__ = [
    "CONTINUED_AAD_LABEL",
    "STEP_MIN_BUCKET",
    "StepKeys",
    "continued_aad",
    "open_continued",
    "parse_continued",
    "seal_continued",
]

# One HKDF label per purpose: a key of one step can never open or forge a message of another.
_EXTRACT_SALT = b"bkv-v3 step keys"
_ANSWER1_LABEL = b"bkv-v3 step-1 answer"
_REQUEST2_LABEL = b"bkv-v3 step-2 request"
_ANSWER2_LABEL = b"bkv-v3 step-2 answer"
CONTINUED_AAD_LABEL = b"bkv-v3 continued request"
NONCE_LEN = 12
_GCM_TAG = 16
# Every step-2 plaintext is padded to this bucket (the largest, RegisterFinish, needs 512), so
# the frontend sees one step-2 size whatever the operation.
STEP_MIN_BUCKET = 512


@dataclass(frozen=True)
class StepKeys:
    """The three keys of one two-step operation, expanded from step 1's `response_key`."""

    answer1: bytes = field(repr=False)  # the node's step-1 answer
    request2: bytes = field(repr=False)  # the client's step-2 request (ContinuedEnvelope)
    answer2: bytes = field(repr=False)  # the node's step-2 answer

    @classmethod
    def derive(cls, response_key: bytes) -> StepKeys:
        """HKDF-SHA256: extract once (fixed salt), expand once per purpose label."""
        if not isinstance(response_key, bytes) or len(response_key) != RESPONSE_KEY_LEN:
            raise InvalidInput(f"response key must be {RESPONSE_KEY_LEN} bytes")
        prk = hmac.new(_EXTRACT_SALT, response_key, hashlib.sha256).digest()

        def expand(label: bytes) -> bytes:
            # RFC 5869 HKDF-Expand for one hash length: T(1) = HMAC(PRK, info || 0x01).
            return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()

        return cls(expand(_ANSWER1_LABEL), expand(_REQUEST2_LABEL), expand(_ANSWER2_LABEL))


def continued_aad(fleet_id: bytes, account_id: str, ticket: bytes) -> bytes:
    """The step-2 request's AAD: label, then `envelope_info` (protocol label, version, fleet id,
    account id, each length-prefixed), then SHA-256 of the ticket as relayed."""
    return (
        CONTINUED_AAD_LABEL + envelope_info(fleet_id, account_id) + hashlib.sha256(ticket).digest()
    )


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != RESPONSE_KEY_LEN:
        raise InvalidInput(f"continuation key must be {RESPONSE_KEY_LEN} bytes")


# --- client ---------------------------------------------------------------------------------


def seal_continued(
    fleet_id: bytes,
    account_id: str,
    ticket: bytes,
    request_key: bytes,
    request: envelope_pb2.VaultRequest,
    rng: Callable[[int], bytes],
) -> bytes:
    """Pad and seal the step-2 `request` under `request_key`; a serialized `ContinuedEnvelope`.

    `request` must carry one operation and no response_key (step 2 derives its answer key).
    """
    _check_key(request_key)
    if request.response_key:
        raise InvalidInput("a step-2 request carries no response_key")
    if request.WhichOneof("op") is None:
        raise InvalidInput("request carries no operation")
    if not ticket:
        raise InvalidInput("a step-2 request needs the ticket of step 1")
    nonce = rng(NONCE_LEN)
    if len(nonce) != NONCE_LEN:
        raise ProtocolError("rng returned the wrong number of bytes")
    padded = pad(request.SerializeToString(deterministic=True), STEP_MIN_BUCKET)
    ciphertext = AESGCM(request_key).encrypt(
        nonce, padded, continued_aad(fleet_id, account_id, ticket)
    )
    envelope = envelope_pb2.ContinuedEnvelope(
        version=PROTOCOL_VERSION,
        fleet_id=fleet_id,
        ticket=ticket,
        nonce=nonce,
        ciphertext=ciphertext,
    )
    return bytes(envelope.SerializeToString(deterministic=True))


# --- vault node -----------------------------------------------------------------------------


def parse_continued(envelope: bytes, fleet_id: bytes) -> envelope_pb2.ContinuedEnvelope:
    """Parse and check a `ContinuedEnvelope` before anything reaches the token.

    `UnsupportedVersion` (an `InvalidInput`) for another protocol version; `InvalidInput` for
    oversized, non-canonical or malformed bytes, another fleet, or a ciphertext of no bucket size.
    """
    if not isinstance(envelope, bytes) or len(envelope) > MAX_ENVELOPE_BYTES:
        raise InvalidInput(f"envelope must be bytes of at most {MAX_ENVELOPE_BYTES}")
    check_header(envelope)
    sealed = parse_message(envelope_pb2.ContinuedEnvelope, envelope, "envelope")
    # One encoding per envelope: relayed bytes cannot be altered and still pass.
    sealed.DiscardUnknownFields()
    if sealed.SerializeToString(deterministic=True) != envelope:
        raise InvalidInput("envelope is not canonically encoded")
    if sealed.fleet_id != fleet_id:
        raise InvalidInput("envelope is addressed to another fleet")
    if len(sealed.nonce) != NONCE_LEN:
        raise InvalidInput("continued envelope nonce must be 12 bytes")
    if len(sealed.ciphertext) - _GCM_TAG not in BUCKETS or not sealed.ticket:
        raise InvalidInput("continued envelope has an invalid size")
    return sealed


def open_continued(
    sealed: envelope_pb2.ContinuedEnvelope, account_id: str, fleet_id: bytes, request_key: bytes
) -> envelope_pb2.VaultRequest:
    """Open a parsed `ContinuedEnvelope` with the request key its ticket held.

    `DecryptError` when it fails to authenticate (a swapped account or ticket, a forged or
    altered envelope); `InvalidInput` for a malformed plaintext.
    """
    _check_key(request_key)
    aad = continued_aad(fleet_id, account_id, sealed.ticket)
    try:
        padded = AESGCM(request_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise DecryptError("continued envelope failed to open") from None
    request = parse_message(envelope_pb2.VaultRequest, unpad(padded), "vault request")
    if request.response_key or request.WhichOneof("op") is None:
        raise InvalidInput("a step-2 request must carry one operation and no response_key")
    return request
