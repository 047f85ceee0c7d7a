"""What a vault node needs from its token, and the rules every token implementation shares.

Two implementations satisfy `NodeToken`: `vault_node.hsm.Token` (SoftHSM2 through PKCS#11, what
a serving node runs) and `vault_node.soft_token.SoftToken` (the same operations with the keys in
process memory, for tests, the in-process cluster and the load tester). Both take their labels,
their input checks and their errors from this module, so a caller sees the same `HsmInputError`
for the same bad input, whichever token it was given. No PKCS#11 here: importing this module
loads no library.
"""

from __future__ import annotations

from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "AES_LABELS",
    "DATA_LABELS",
    "FIRST_EPOCH",
    "FLEET_LABELS",
    "HMAC_SHA256_LABELS",
    "HMAC_SHA512_LABELS",
    "KEM_LABEL",
    "MAX_EPOCH",
    "ROTATED_LABELS",
    "DataObjects",
    "HsmDecryptError",
    "HsmError",
    "HsmInputError",
    "HsmKeyMissing",
    "HsmLibraryConflict",
    "HsmLoginError",
    "NodeToken",
    "TokenOps",
    "check_data_label",
    "check_fleet_label",
    "check_gcm",
    "check_kem_label",
    "check_label",
    "epoch_label",
    "label_epoch",
    "validate_p256_point",
]

KEM_LABEL: Final = "kem"
AES_LABELS: Final = frozenset({"record", "ticket"})
HMAC_SHA512_LABELS: Final = frozenset({"oprf_seed", "ake_seed"})
# `witness` MACs the witnesses' answers (vault_node.witness_core): any token of the fleet can
# make and check them, nobody without one (etcd, a frontend, the network) can forge one.
HMAC_SHA256_LABELS: Final = frozenset({"id_mac", "witness"})
FLEET_LABELS: Final = (KEM_LABEL, "record", "ticket", "oprf_seed", "ake_seed", "id_mac", "witness")
# The keys a fleet rotation replaces (vault_node.fleet_keys), one set per epoch: epoch 1 keeps the
# labels above, epoch n > 1 labels them "kem.n", "record.n", "ticket.n". The others are never
# rotated: a new `oprf_seed` or `ake_seed` would invalidate every password, a new `id_mac` would
# move every record to another etcd key, and `witness` MACs answers between live nodes.
ROTATED_LABELS: Final = (KEM_LABEL, "record", "ticket")
FIRST_EPOCH: Final = 1
MAX_EPOCH: Final = 65_535
# Data objects a node keeps in its own token (vault_node.checkpoint, vault_node.fleet_keys):
# never key material.
DATA_LABELS: Final = frozenset({"store_checkpoint", "etcd_cluster", "witness_heads", "fleet_state"})
P256_POINT_LEN: Final = 65
GCM_NONCE_LEN: Final = 12
GCM_TAG_LEN: Final = 16
ECDH_SECRET_LEN: Final = 32


# --- errors (one tree for both tokens) ---------------------------------------------------------


class HsmError(Exception):
    """The token failed or is unusable. Never holds a PIN or key bytes; not retryable as is."""


class HsmLibraryConflict(HsmError):
    """This process already loaded the PKCS#11 library with another SOFTHSM2_CONF."""


class HsmLoginError(HsmError):
    """The token was not found by label, or the PIN was refused."""


class HsmKeyMissing(HsmError):
    """The token holds no key with this label (or more than one): it is not provisioned."""

    def __init__(self, label: str, detail: str = "no such key") -> None:
        super().__init__(f"token key {label!r}: {detail}")
        self.label = label


class HsmInputError(HsmError, ValueError):
    """The caller passed malformed input (bad point, nonce length, unknown label)."""


class HsmDecryptError(HsmError):
    """AES-GCM open failed: wrong key, nonce, AAD or a tampered ciphertext (one error for all)."""


# --- the interface -----------------------------------------------------------------------------


class TokenOps(Protocol):
    """The fleet-key operations of the request logic (labels are the fleet key labels)."""

    def ecdh(self, peer_point: bytes, label: str = KEM_LABEL) -> bytes:
        """ECDH with the `kem` private key (of the epoch `label` names): the x-coordinate."""
        ...

    def kem_public_key(self, label: str = KEM_LABEL) -> bytes:
        """The fleet `kem` public key (of the epoch `label` names), a 65-byte point."""
        ...

    def aes_gcm_seal(self, label: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM ciphertext || tag under the token key `label`."""
        ...

    def aes_gcm_open(self, label: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Inverse of `aes_gcm_seal`; `HsmDecryptError` on any failure."""
        ...

    def hmac_sha512(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA512 under `oprf_seed` or `ake_seed` (64 bytes)."""
        ...

    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA256 under `id_mac` or `witness` (32 bytes)."""
        ...


class DataObjects(Protocol):
    """The token's data objects by label (the store checkpoint, the etcd pin, witness heads)."""

    def read_data(self, label: str) -> list[bytes]:
        """The values of every data object called `label` (any order)."""
        ...

    def replace_data(self, label: str, value: bytes) -> None:
        """Store a new object `label` = `value`, then destroy the older ones of that label."""
        ...


class NodeToken(TokenOps, DataObjects, Protocol):
    """Everything a vault node process uses of its token."""

    @property
    def label(self) -> str:
        """The token's label (names the node's token in logs; not secret)."""
        ...

    def close(self) -> None:
        """End the session (idempotent); every later key operation raises `HsmError`."""
        ...


# --- epoch labels ------------------------------------------------------------------------------


def epoch_label(base: str, epoch: int) -> str:
    """The label of rotated key `base` ("kem", "record", "ticket") in fleet epoch `epoch`.

    >>> epoch_label("record", 1), epoch_label("record", 2)
    ('record', 'record.2')
    """
    if base not in ROTATED_LABELS:
        raise HsmInputError(f"{base!r} is not a key that rotates ({list(ROTATED_LABELS)})")
    if not FIRST_EPOCH <= epoch <= MAX_EPOCH:
        raise HsmInputError(f"a fleet epoch is in {FIRST_EPOCH}..{MAX_EPOCH}")
    # Epoch 1 keeps the labels tokens and records had before rotation existed.
    return base if epoch == FIRST_EPOCH else f"{base}.{epoch}"


def label_epoch(label: str) -> tuple[str, int]:
    """`(base, epoch)` of a fleet key label; epoch 1 for a label without a suffix.

    >>> label_epoch("ticket.3"), label_epoch("id_mac")
    (('ticket', 3), ('id_mac', 1))
    """
    base, sep, suffix = label.partition(".")
    if not sep:
        return label, FIRST_EPOCH
    # Canonical digits only ("record.02" is not "record.2"): one label per key, no aliases.
    if base not in ROTATED_LABELS or not suffix.isdigit() or suffix != str(int(suffix)):
        raise HsmInputError(f"unknown fleet key label {label!r}")
    epoch = int(suffix)
    if not FIRST_EPOCH < epoch <= MAX_EPOCH:
        raise HsmInputError(f"unknown fleet key label {label!r}")
    return base, epoch


def _base_of(label: str) -> str:
    """The base label of `label` ("record.2" -> "record"), or `label` itself when it is none."""
    try:
        return label_epoch(label)[0]
    except HsmInputError:
        return label


# --- input checks (both tokens run the same ones, in the same order) ---------------------------


def validate_p256_point(point: bytes) -> None:
    """Raise `HsmInputError` unless `point` is an uncompressed P-256 point on the curve."""
    if len(point) != P256_POINT_LEN or point[0] != 0x04:
        raise HsmInputError("peer point must be a 65-byte uncompressed P-256 point")
    try:
        # Off-curve (invalid-curve attack) points must never reach the private key.
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise HsmInputError("peer point is not on P-256") from None


def check_gcm(label: str, nonce: bytes) -> None:
    check_label(_base_of(label), AES_LABELS, "AES-GCM")
    if len(nonce) != GCM_NONCE_LEN:
        raise HsmInputError(f"AES-GCM nonce must be {GCM_NONCE_LEN} bytes")


def check_data_label(label: str) -> None:
    if label not in DATA_LABELS:
        raise HsmInputError(f"{label!r} is not a data object of the node ({sorted(DATA_LABELS)})")


def check_fleet_label(label: str) -> None:
    if label not in FLEET_LABELS and _base_of(label) == label:
        raise HsmInputError(f"unknown fleet key label {label!r}")


def check_kem_label(label: str) -> None:
    if _base_of(label) != KEM_LABEL:
        raise HsmInputError(f"key {label!r} is not a kem key")


def check_label(label: str, allowed: frozenset[str], operation: str) -> None:
    # Key separation: each fleet key serves exactly one purpose.
    if label not in allowed:
        raise HsmInputError(f"key {label!r} is not a {operation} key ({sorted(allowed)})")
