"""The sealed envelope: client -> vault node requests under HPKE, node -> client responses.

Client side: `seal_request` (HPKE to the pinned fleet key with cryptography's `hpke.Suite`, the
only HPKE sender used in production) and `open_response`. Node side: `open_request` (our RFC 9180
receiver, the DH running in the token) and `seal_response` (AES-256-GCM under an answer key).
Plaintexts are padded to fixed buckets so that the frontend cannot tell operations apart by size.

Protocol 3: this is step 1 of every operation; step 2 is a `ContinuedEnvelope` under a key
derived from step 1's `response_key` (vault_protocol.continuation). Answers are sealed under
the step's answer key (`StepKeys`), never under the raw response key. A node reads every
envelope's version first (`check_header`) and refuses another version by name
(`UnsupportedVersion`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from google.protobuf.message import DecodeError

from bkv.v1 import envelope_pb2
from vault_protocol import hpke
from vault_protocol.errors import DecryptError, InvalidInput, ProtocolError

__all__ = [
    "BUCKETS",
    "FLEET_ID_LEN",
    "MAX_ENVELOPE_BYTES",
    "PROTOCOL_VERSION",
    "RESPONSE_AAD",
    "RESPONSE_KEY_LEN",
    "RESPONSE_MIN_BUCKET",
    "FleetKey",
    "UnsupportedVersion",
    "addressed_fleet",
    "check_header",
    "envelope_info",
    "is_continued",
    "open_request",
    "open_response",
    "pad",
    "parse_message",
    "seal_request",
    "seal_response",
    "unpad",
]

# 2: registration tickets and per-registration OPRF keys (2026-11-23). A node of version 1
# refuses these envelopes instead of storing a registration it would never recover.
# 3: two envelopes per operation whatever its outcome, step 2 continued under a key of step 1
# (vault_protocol.continuation), tickets of one size. Versions 1 and 2 are refused by name.
PROTOCOL_VERSION = 3
PROTOCOL_LABEL = b"bkv-v1"  # the label stays; the version beside it is bound too
FLEET_ID_LEN = 16
RESPONSE_KEY_LEN = 32
RESPONSE_AAD = b"bkv-v3 response"
RESPONSE_NONCE_LEN = 12
MAX_ENVELOPE_BYTES = 32 * 1024
BUCKETS = (512, 1024, 2048, 4096, 16384)
# Every answer is padded to at least this bucket: the largest one (KE2 + login ticket) needs
# 1024, the others 512, and the frontend must not tell a recovery from a registration by size.
RESPONSE_MIN_BUCKET = 1024
_LENGTH_PREFIX = 4
_GCM_TAG = 16
_SUITE = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)

Ecdh = hpke.Ecdh


class UnsupportedVersion(InvalidInput):
    """An envelope of another protocol version: refused before anything else, nothing applied.

    Its message says which versions meet (no secret: the version travels in the clear).
    """

    def __init__(self, got: int) -> None:
        self.got = got
        advice = "upgrade the client" if got < PROTOCOL_VERSION else "this vault is older"
        super().__init__(
            f"unsupported protocol version: this vault speaks protocol {PROTOCOL_VERSION}; "
            f"envelope is version {got} - {advice}"
        )


def check_header(envelope: bytes) -> None:
    """Read the version (field 1 of every envelope kind, of every version) first and refuse
    any other with `UnsupportedVersion`; `InvalidInput` when the bytes are no protobuf."""
    header = parse_message(envelope_pb2.EnvelopeHeader, envelope, "envelope")
    if header.version != PROTOCOL_VERSION:
        raise UnsupportedVersion(header.version)


def route(envelope: bytes) -> tuple[bool, bytes]:
    """What a node needs before it opens `envelope` (either kind, size-checked by the caller),
    from one parse: whether it is a step-2 `ContinuedEnvelope` rather than a step-1
    `SealedEnvelope` (only the latter carries an HPKE `enc`; each kind's own parser then refuses
    any field of the other), and the fleet id it names in the clear (field 2 of both).
    `InvalidInput` when that is not a fleet id's length; whether the fleet is known is the
    node's question (a rotated fleet's nodes accept more than one)."""
    sealed = parse_message(envelope_pb2.SealedEnvelope, envelope, "envelope")
    fleet_id = bytes(sealed.fleet_id)
    if len(fleet_id) != FLEET_ID_LEN:
        raise InvalidInput(f"fleet id must be {FLEET_ID_LEN} bytes")
    return not sealed.enc, fleet_id


def addressed_fleet(envelope: bytes) -> bytes:
    """The fleet id `envelope` names in the clear (`route`)."""
    return route(envelope)[1]


def is_continued(envelope: bytes) -> bool:
    """Whether `envelope` is a step-2 `ContinuedEnvelope` (`route`)."""
    return route(envelope)[0]


class FleetKey:
    """The fleet's pinned HPKE `kem` public key (P-256) and its fleet id."""

    __slots__ = ("_fleet_id", "_point", "_public_key")

    def __init__(self, public_key_bytes: bytes) -> None:
        """`public_key_bytes`: the 65-byte uncompressed point; `InvalidInput` otherwise."""
        self._public_key = hpke.validate_public_key(public_key_bytes)
        self._point = public_key_bytes
        self._fleet_id = hashlib.sha256(public_key_bytes).digest()[:FLEET_ID_LEN]

    @classmethod
    def from_pem(cls, pem: bytes) -> FleetKey:
        """Load a PEM SubjectPublicKeyInfo (the ceremony's `fleet.pub`); must be P-256."""
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError):
            raise InvalidInput("fleet public key is not a valid PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise InvalidInput("fleet public key is not a P-256 key")
        return cls(
            key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )

    def to_pem(self) -> bytes:
        return self._public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_key_bytes(self) -> bytes:
        """The 65-byte uncompressed point (pkRm)."""
        return self._point

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def fleet_id(self) -> bytes:
        """SHA-256(uncompressed point)[:16]."""
        return self._fleet_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FleetKey) and other._point == self._point

    def __hash__(self) -> int:
        return hash(self._point)

    def __repr__(self) -> str:
        return f"FleetKey(fleet_id={self._fleet_id.hex()})"


def _length_prefixed(data: bytes) -> bytes:
    if len(data) >= 1 << 16:
        raise InvalidInput("envelope info field too long")
    return len(data).to_bytes(2, "big") + data


def envelope_info(fleet_id: bytes, account_id: str) -> bytes:
    """HPKE `info`: protocol label and version, fleet id and account id, each with a 2-byte
    length. The version is bound here too, not only in the envelope's clear version field.

    Binding the account here makes a frontend that swaps accounts get a failed open.
    """
    if len(fleet_id) != FLEET_ID_LEN:
        raise InvalidInput(f"fleet id must be {FLEET_ID_LEN} bytes")
    return (
        _length_prefixed(PROTOCOL_LABEL)
        + _length_prefixed(PROTOCOL_VERSION.to_bytes(2, "big"))
        + _length_prefixed(fleet_id)
        + _length_prefixed(account_id.encode("utf-8"))
    )


def pad(plaintext: bytes, minimum: int = 0) -> bytes:
    """4-byte big-endian length || plaintext || zeros, to the smallest bucket that fits (and is
    at least `minimum`)."""
    needed = _LENGTH_PREFIX + len(plaintext)
    for bucket in BUCKETS:
        if needed <= bucket and minimum <= bucket:
            # Fixed sizes: the frontend sees only the bucket, not which operation it carries.
            return (
                len(plaintext).to_bytes(_LENGTH_PREFIX, "big") + plaintext + bytes(bucket - needed)
            )
    raise InvalidInput(f"message too large to pad (max {BUCKETS[-1] - _LENGTH_PREFIX} bytes)")


def unpad(padded: bytes) -> bytes:
    """Inverse of `pad`: the size must be a bucket, the length must fit, the padding be zero."""
    if len(padded) not in BUCKETS:
        raise InvalidInput("padded message is not a bucket size")
    length = int.from_bytes(padded[:_LENGTH_PREFIX], "big")
    end = _LENGTH_PREFIX + length
    if end > len(padded):
        raise InvalidInput("padded message length out of range")
    if any(padded[end:]):
        raise InvalidInput("padding is not zero")
    return padded[_LENGTH_PREFIX:end]


def _check_response_key(response_key: bytes) -> None:
    if not isinstance(response_key, bytes) or len(response_key) != RESPONSE_KEY_LEN:
        raise InvalidInput(f"response key must be {RESPONSE_KEY_LEN} bytes")


_STEP1_OPS = frozenset({"register_start", "recover_start", "begin"})


def _check_request(request: envelope_pb2.VaultRequest) -> None:
    if len(request.response_key) != RESPONSE_KEY_LEN:
        raise InvalidInput(f"request response_key must be {RESPONSE_KEY_LEN} bytes")
    op = request.WhichOneof("op")
    if op is None:
        raise InvalidInput("request carries no operation")
    if op not in _STEP1_OPS:
        # A second step travels only continued, under its ticket (vault_protocol.continuation).
        raise InvalidInput("a sealed envelope carries a first step only")


# --- client ---------------------------------------------------------------------------------


def seal_request(fleet: FleetKey, account_id: str, request: envelope_pb2.VaultRequest) -> bytes:
    """Pad and HPKE-seal `request` to the fleet; returns a serialized `SealedEnvelope`.

    `request.response_key` must hold a fresh 32-byte key (both steps' keys are derived from it,
    `StepKeys`) and exactly one first-step operation must be set; `InvalidInput` otherwise.
    """
    _check_request(request)
    plaintext = pad(request.SerializeToString(deterministic=True))
    info = envelope_info(fleet.fleet_id, account_id)
    sealed = _SUITE.encrypt(plaintext, fleet.public_key, info)
    envelope = envelope_pb2.SealedEnvelope(
        version=PROTOCOL_VERSION,
        fleet_id=fleet.fleet_id,
        enc=sealed[: hpke.N_ENC],
        ciphertext=sealed[hpke.N_ENC :],
    )
    return bytes(envelope.SerializeToString(deterministic=True))


def open_response(response_key: bytes, sealed_response: bytes) -> envelope_pb2.VaultResponse:
    """Open the node's answer sealed under `response_key` (a step's answer key, `StepKeys`).

    `InvalidInput` for malformed or oversized bytes, `DecryptError` if it fails to authenticate.
    """
    _check_response_key(response_key)
    if len(sealed_response) > MAX_ENVELOPE_BYTES:
        raise InvalidInput("sealed response too large")
    sealed = parse_message(envelope_pb2.SealedResponse, sealed_response, "sealed response")
    if len(sealed.nonce) != RESPONSE_NONCE_LEN:
        raise InvalidInput("sealed response nonce must be 12 bytes")
    try:
        padded = AESGCM(response_key).decrypt(sealed.nonce, sealed.ciphertext, RESPONSE_AAD)
    except InvalidTag:
        raise DecryptError("response failed to open") from None
    return parse_message(envelope_pb2.VaultResponse, unpad(padded), "vault response")


# --- vault node -----------------------------------------------------------------------------


def open_request(
    envelope: bytes, account_id: str, fleet_id: bytes, ecdh: Ecdh, pk_r: bytes
) -> envelope_pb2.VaultRequest:
    """Open a client's `SealedEnvelope` addressed to `account_id` on this fleet.

    `ecdh` is DH with the fleet's `kem` private key (the token's ECDH1_DERIVE), `pk_r` the
    fleet's 65-byte public point. `UnsupportedVersion`: another protocol version; `InvalidInput`:
    oversized or malformed bytes, wrong fleet, bad `enc`, a bad plaintext or a second step;
    `DecryptError`: HPKE failed to open (e.g. the frontend swapped the account id).
    """
    # Size first: nothing larger than any legitimate envelope is parsed or reaches the token.
    if not isinstance(envelope, bytes) or len(envelope) > MAX_ENVELOPE_BYTES:
        raise InvalidInput(f"envelope must be bytes of at most {MAX_ENVELOPE_BYTES}")
    check_header(envelope)
    sealed = parse_message(envelope_pb2.SealedEnvelope, envelope, "envelope")
    # One encoding per envelope (no unknown or repeated fields): relayed bytes cannot be altered
    # and still pass.
    sealed.DiscardUnknownFields()
    if sealed.SerializeToString(deterministic=True) != envelope:
        raise InvalidInput("envelope is not canonically encoded")
    if sealed.fleet_id != fleet_id:
        raise InvalidInput("envelope is addressed to another fleet")
    # Only bucket-sized ciphertexts can be genuine: reject the rest before spending a token ECDH.
    if len(sealed.ciphertext) - _GCM_TAG not in BUCKETS:
        raise InvalidInput("envelope ciphertext has an invalid size")
    info = envelope_info(fleet_id, account_id)
    padded = hpke.open_base(sealed.enc, sealed.ciphertext, info, b"", ecdh, pk_r)
    request = parse_message(envelope_pb2.VaultRequest, unpad(padded), "vault request")
    _check_request(request)
    return request


def seal_response(
    response_key: bytes, response: envelope_pb2.VaultResponse, rng: Callable[[int], bytes]
) -> bytes:
    """Pad and seal `response` under an answer key; serialized `SealedResponse`.

    Every answer is padded to at least `RESPONSE_MIN_BUCKET`: one size for every step and
    every outcome."""
    _check_response_key(response_key)
    nonce = rng(RESPONSE_NONCE_LEN)
    if len(nonce) != RESPONSE_NONCE_LEN:
        raise ProtocolError("rng returned the wrong number of bytes")
    # A fresh random nonce per response: a step-2 answer key may answer a replay or a retry.
    padded = pad(response.SerializeToString(deterministic=True), RESPONSE_MIN_BUCKET)
    ciphertext = AESGCM(response_key).encrypt(nonce, padded, RESPONSE_AAD)
    sealed = envelope_pb2.SealedResponse(nonce=nonce, ciphertext=ciphertext)
    return bytes(sealed.SerializeToString(deterministic=True))


def parse_message(message_type: Any, data: bytes, what: str) -> Any:
    """Parse `data` as `message_type`; protobuf decode errors become `InvalidInput`."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise InvalidInput(f"{what} is not a valid protobuf message") from None
    return message
