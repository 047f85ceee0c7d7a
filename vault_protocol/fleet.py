"""The fleet announcement: a fleet's HPKE key, its epoch and its OPAQUE context, signed by the
fleet root key that clients pin.

A fleet's `kem` key is replaced by a rotation (`bkv-cluster rotate-fleet`); clients must learn the
new one through the frontend, which they do not trust. So the operator signs an announcement with
the fleet root key (Ed25519, kept in a token of its own, never in a vault node's) and clients
accept it only if the signature verifies against the root key they pinned at install time
(client.toml `fleet_root_key`) and its epoch is higher than the one they hold. The frontend and
etcd only carry the bytes.

Pure: the signature is made by an injected `sign` callable (the root token's EdDSA).

>>> from cryptography.hazmat.primitives.asymmetric import ec, ed25519
>>> from cryptography.hazmat.primitives import serialization
>>> root = ed25519.Ed25519PrivateKey.generate()
>>> point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
...     serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
>>> signed = sign_announcement(FleetAnnouncement(2, point, b"", 0), root.sign)
>>> pinned = FleetRootKey(root.public_key().public_bytes(
...     serialization.Encoding.Raw, serialization.PublicFormat.Raw))
>>> pinned.verify(signed).epoch
2
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from bkv.v1 import fleet_pb2
from vault_protocol.envelope import FleetKey
from vault_protocol.errors import InvalidInput, ProtocolError

__all__ = [
    "MAX_ANNOUNCEMENT_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_EPOCH",
    "SIGNING_PREFIX",
    "AnnouncementRefused",
    "FleetAnnouncement",
    "FleetRootKey",
    "check_context",
    "parse_announcement",
    "sign_announcement",
    "signing_input",
]

# Domain separation: a root signature over anything else can never pass for an announcement.
SIGNING_PREFIX = b"bkv-v1 fleet announcement"
ROOT_KEY_LEN = 32
SIGNATURE_LEN = 64
MAX_ANNOUNCEMENT_BYTES = 4096
MAX_EPOCH = 65_535
# An OPAQUE context fits RFC 9807's 2-byte length; fleets keep it far shorter (a product name).
MAX_CONTEXT_BYTES = 1024


class AnnouncementRefused(ProtocolError):
    """A fleet announcement that is unsigned, wrongly signed, malformed or inconsistent: the
    client keeps the key it holds. The message says which, and names no key material."""


def check_context(context: bytes) -> None:
    """`InvalidInput` unless `context` can be a fleet's OPAQUE context (bytes, bounded)."""
    if not isinstance(context, bytes) or len(context) > MAX_CONTEXT_BYTES:
        raise InvalidInput(f"an OPAQUE context is at most {MAX_CONTEXT_BYTES} bytes")


@dataclass(frozen=True)
class FleetAnnouncement:
    """What the operator announces: the fleet's kem key of `epoch` and its OPAQUE context."""

    epoch: int
    kem_public_key: bytes  # 65-byte uncompressed P-256 point
    opaque_context: bytes
    issued_at_ms: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.epoch <= MAX_EPOCH:
            raise InvalidInput(f"a fleet epoch is in 1..{MAX_EPOCH}")
        FleetKey(self.kem_public_key)  # a valid P-256 point, or InvalidInput
        check_context(self.opaque_context)
        if not 0 <= self.issued_at_ms < 1 << 63:
            raise InvalidInput("issued_at_ms out of range")

    @property
    def fleet_key(self) -> FleetKey:
        return FleetKey(self.kem_public_key)

    @property
    def fleet_id(self) -> bytes:
        return self.fleet_key.fleet_id

    def to_bytes(self) -> bytes:
        """The serialized `FleetAnnouncement` (deterministic): what the root key signs."""
        message = fleet_pb2.FleetAnnouncement(
            epoch=self.epoch,
            kem_public_key=self.kem_public_key,
            fleet_id=self.fleet_id,
            opaque_context=self.opaque_context,
            issued_at_ms=self.issued_at_ms,
        )
        return bytes(message.SerializeToString(deterministic=True))


def signing_input(payload: bytes) -> bytes:
    """The bytes the root key signs for a serialized announcement `payload`."""
    return SIGNING_PREFIX + payload


def sign_announcement(announcement: FleetAnnouncement, sign: Callable[[bytes], bytes]) -> bytes:
    """A serialized `SignedFleetAnnouncement`; `sign(data) -> 64-byte Ed25519 signature` runs
    where the root key is (its token)."""
    payload = announcement.to_bytes()
    signature = sign(signing_input(payload))
    if len(signature) != SIGNATURE_LEN:
        raise InvalidInput("the root key returned a signature of the wrong length")
    signed = fleet_pb2.SignedFleetAnnouncement(announcement=payload, signature=signature)
    return bytes(signed.SerializeToString(deterministic=True))


@dataclass(frozen=True)
class FleetRootKey:
    """The pinned fleet root public key (Ed25519): the one key announcements must verify under."""

    public_bytes: bytes = field(repr=False)  # raw 32 bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_bytes, bytes) or len(self.public_bytes) != ROOT_KEY_LEN:
            raise InvalidInput("a fleet root key is a 32-byte Ed25519 public key")
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public_bytes)
        except ValueError:
            raise InvalidInput("a fleet root key is a 32-byte Ed25519 public key") from None

    def __repr__(self) -> str:
        return f"FleetRootKey(root_id={self.root_id.hex()})"

    @property
    def root_id(self) -> bytes:
        """SHA-256 of the raw key, first 16 bytes (for people comparing pins)."""
        return hashlib.sha256(self.public_bytes).digest()[:16]

    @classmethod
    def from_pem(cls, pem: bytes) -> FleetRootKey:
        """Load a PEM SubjectPublicKeyInfo (the cluster's `fleet/root.pub`); must be Ed25519."""
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError):
            raise InvalidInput("fleet root key is not a valid PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise InvalidInput("fleet root key is not an Ed25519 key")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def to_pem(self) -> bytes:
        key = ed25519.Ed25519PublicKey.from_public_bytes(self.public_bytes)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signed: bytes) -> FleetAnnouncement:
        """The announcement in `signed` (a serialized `SignedFleetAnnouncement`), once its
        signature verifies under this key; `AnnouncementRefused` otherwise, nothing learnt."""
        if not isinstance(signed, bytes) or not signed:
            raise AnnouncementRefused("no fleet announcement was given")
        if len(signed) > MAX_ANNOUNCEMENT_BYTES:
            raise AnnouncementRefused("the fleet announcement is oversized")
        try:
            outer = fleet_pb2.SignedFleetAnnouncement.FromString(signed)
        except DecodeError:
            raise AnnouncementRefused("the fleet announcement does not parse") from None
        if not outer.signature:
            raise AnnouncementRefused("the fleet announcement is unsigned")
        try:
            # Security: the signature is checked before a byte of the announcement is read.
            key = ed25519.Ed25519PublicKey.from_public_bytes(self.public_bytes)
            key.verify(bytes(outer.signature), signing_input(bytes(outer.announcement)))
        except InvalidSignature:
            raise AnnouncementRefused(
                "the fleet announcement's signature does not verify under the pinned root key"
            ) from None
        return _parse(bytes(outer.announcement))


def parse_announcement(payload: bytes) -> FleetAnnouncement:
    """A serialized `FleetAnnouncement`, checked for consistency; `InvalidInput` otherwise.

    Not a verification: the signer checks with it what it is about to sign; clients take an
    announcement only through `FleetRootKey.verify`."""
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise InvalidInput("the fleet announcement is oversized")
    try:
        message = fleet_pb2.FleetAnnouncement.FromString(payload)
    except DecodeError:
        raise InvalidInput("the fleet announcement does not parse") from None
    announcement = FleetAnnouncement(
        epoch=message.epoch,
        kem_public_key=bytes(message.kem_public_key),
        opaque_context=bytes(message.opaque_context),
        issued_at_ms=message.issued_at_ms,
    )
    if bytes(message.fleet_id) != announcement.fleet_id:
        raise InvalidInput("the fleet announcement names another fleet id than its key's")
    return announcement


def _parse(payload: bytes) -> FleetAnnouncement:
    """A signed payload, checked for consistency (the root key signed it: a bug, not an attack,
    if it is inconsistent; refused all the same)."""
    try:
        return parse_announcement(payload)
    except InvalidInput as exc:
        raise AnnouncementRefused(f"the signed fleet announcement is malformed: {exc}") from None
