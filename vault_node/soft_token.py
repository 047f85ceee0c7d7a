"""A software token: the vault node's token operations with the fleet keys in process memory.

A faithful model of `vault_node.hsm.Token` (it satisfies the same `token_api.NodeToken`), as
Juicebox keeps a software HSM beside the real one: the same mechanisms (P-256 ECDH, AES-256-GCM
with a 16-byte tag, HMAC-SHA512/256), the same labels, the same input checks in the same order
and the same typed errors (`HsmInputError`, `HsmDecryptError`, `HsmKeyMissing`, `HsmError` once
closed or read-only). `tests/integration/test_token_parity.py` runs one operation sequence on both
and compares. For unit tests, the in-process cluster and the load tester's server-work ceiling.

Never for a serving node: its keys are ordinary Python bytes, readable by anything in the process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_node.token_api import (
    AES_LABELS,
    FLEET_LABELS,
    GCM_TAG_LEN,
    HMAC_SHA256_LABELS,
    HMAC_SHA512_LABELS,
    KEM_LABEL,
    ROTATED_LABELS,
    HsmDecryptError,
    HsmError,
    HsmKeyMissing,
    NodeToken,
    check_data_label,
    check_fleet_label,
    check_gcm,
    check_kem_label,
    check_label,
    epoch_label,
    label_epoch,
    validate_p256_point,
)

Rng = Callable[[int], bytes]

# The order of P-256's base point: a private scalar is in [1, n).
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Key sizes in bytes, as the key ceremony makes them (vault_node.ceremony_cli.FLEET_KEYS).
SECRET_SIZES: Final = {
    "record": 32, "ticket": 32, "oprf_seed": 64, "ake_seed": 64, "id_mac": 32, "witness": 32,
}  # fmt: skip


@dataclass(frozen=True)
class FleetMaterial:
    """The key bytes of one fleet: what the ceremony keeps inside the tokens, here in the open.

    A label left out is a key the token lacks (`HsmKeyMissing`), as on an unprovisioned token;
    `FleetMaterial()` is a token with no fleet key at all.
    """

    kem_private: bytes | None = field(default=None, repr=False)  # 32-byte big-endian scalar
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)  # by fleet label
    # The kem keys of later fleet epochs ("kem.2": scalar), which a rotation adds; their
    # `record.n` and `ticket.n` are in `secrets`.
    later_kems: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, rng: Rng = os.urandom) -> FleetMaterial:
        """A whole fleet's keys, made from `rng` (deterministic when `rng` is)."""
        secrets = {label: rng(SECRET_SIZES[label]) for label in FLEET_LABELS[1:]}
        return cls(kem_private=_scalar(rng), secrets=secrets)

    def with_epoch(self, epoch: int, rng: Rng = os.urandom) -> FleetMaterial:
        """This fleet plus new `kem`, `record` and `ticket` keys of `epoch` (> 1): what a
        rotation's ceremony makes and carries into every token (`SoftToken.install`)."""
        kem, record, ticket = (epoch_label(base, epoch) for base in ROTATED_LABELS)
        if epoch <= 1 or kem in self.later_kems:
            raise ValueError(f"epoch {epoch} exists already or is not a later epoch")
        return FleetMaterial(
            kem_private=self.kem_private,
            secrets={**self.secrets, record: rng(32), ticket: rng(32)},
            later_kems={**self.later_kems, kem: _scalar(rng)},
        )

    def labels(self) -> list[str]:
        """Every key label this material holds."""
        held = [KEM_LABEL] if self.kem_private is not None else []
        return held + list(self.secrets) + list(self.later_kems)

    def validate(self) -> None:
        problems = []
        for label, scalar in (("kem_private", self.kem_private), *self.later_kems.items()):
            if scalar is not None and (
                len(scalar) != 32 or not 1 <= int.from_bytes(scalar, "big") < P256_ORDER
            ):
                problems.append(f"{label} must be a 32-byte P-256 scalar in [1, n)")
        for label in self.later_kems:
            if _base(label) != KEM_LABEL or label == KEM_LABEL:
                problems.append(f"{label!r} is not a later epoch's kem key")
        for label, value in self.secrets.items():
            if _base(label) not in SECRET_SIZES:
                problems.append(f"{label!r} is not a secret fleet key")
            elif _base(label) in AES_LABELS and len(value) != 32:
                problems.append(f"{label!r} must be 32 bytes (AES-256)")
            elif not value:
                problems.append(f"{label!r} must not be empty")
        if problems:
            raise ValueError("invalid fleet material: " + "; ".join(problems))


def _scalar(rng: Rng) -> bytes:
    """A random P-256 private scalar (64 spare bits: no bias)."""
    return (int.from_bytes(rng(40), "big") % (P256_ORDER - 1) + 1).to_bytes(32, "big")


def _base(label: str) -> str:
    try:
        return label_epoch(label)[0]
    except HsmError:
        return label


def _private(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())


class SoftToken:
    """One open "session" on a software token holding `material` (a new random fleet if None).

    `read_write=False` refuses `replace_data`, as a read-only PKCS#11 session does. The `data`
    dict (label -> values) is public so that tests can plant what a crash or an insider leaves.
    """

    def __init__(
        self,
        material: FleetMaterial | None = None,
        *,
        rng: Rng = os.urandom,
        label: str = "soft-token",
        read_write: bool = True,
    ) -> None:
        material = material if material is not None else FleetMaterial.generate(rng)
        self._label = label
        self._read_write = read_write
        self._open = True
        self._kems: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._aes: dict[str, AESGCM] = {}
        self._secrets: dict[str, bytes] = {}
        self._kem_public: dict[str, bytes] = {}  # read once and kept, as the real token does
        self._material = FleetMaterial()
        self.install(material)
        self.data: dict[str, list[bytes]] = {}  # data objects by label
        self.data_writes = 0

    def install(self, material: FleetMaterial) -> None:
        """Hold every key of `material` (those held already stay): what the key ceremony does
        to a token, at its provisioning or when a rotation adds an epoch's keys."""
        material.validate()
        self._material = material
        if material.kem_private is not None:
            self._kems[KEM_LABEL] = _private(material.kem_private)
        for kem_label, scalar in material.later_kems.items():
            self._kems[kem_label] = _private(scalar)
        for key_label, value in material.secrets.items():
            if _base(key_label) in AES_LABELS:
                self._aes[key_label] = AESGCM(value)
            else:
                self._secrets[key_label] = bytes(value)

    def destroy(self, labels: Collection[str]) -> None:
        """Destroy the keys `labels` (a retired epoch's), as the ceremony's `fleet-destroy`
        does in a real token: every later use raises `HsmKeyMissing`."""
        for label in labels:
            check_fleet_label(label)
            self._kems.pop(label, None)
            self._kem_public.pop(label, None)
            self._aes.pop(label, None)
            self._secrets.pop(label, None)

    def held_labels(self) -> list[str]:
        """Every fleet key label this token holds (what `ceremony_cli fleet-status` lists)."""
        return sorted({*self._kems, *self._aes, *self._secrets})

    def __repr__(self) -> str:
        return f"SoftToken(label={self._label!r}, open={self._open})"

    @property
    def label(self) -> str:
        return self._label

    @property
    def material(self) -> FleetMaterial:
        """The fleet keys last installed (a rotation's test makes the next epoch from them)."""
        return self._material

    def same_fleet(self, label: str | None = None) -> SoftToken:
        """Another token holding the same fleet keys (a second node); data objects its own."""
        twin = SoftToken(self._material, label=label or self._label, read_write=self._read_write)
        twin.destroy([held for held in twin.held_labels() if held not in self.held_labels()])
        return twin

    def close(self) -> None:
        """End the session (idempotent); key and data operations then raise `HsmError`."""
        self._open = False

    def __enter__(self) -> SoftToken:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- key lookup, as `Token._key`: closed first, then missing --

    def _check_open(self) -> None:
        if not self._open:
            raise HsmError(f"token {self._label!r} is closed")

    def _private_kem(self, label: str) -> ec.EllipticCurvePrivateKey:
        self._check_open()
        key = self._kems.get(label)
        if key is None:
            raise HsmKeyMissing(label)
        return key

    def _aes_key(self, label: str) -> AESGCM:
        self._check_open()
        key = self._aes.get(label)
        if key is None:
            raise HsmKeyMissing(label)
        return key

    def _secret(self, label: str) -> bytes:
        self._check_open()
        key = self._secrets.get(label)
        if key is None:
            raise HsmKeyMissing(label)
        return key

    # -- the operations of token_api.TokenOps --

    def ecdh(self, peer_point: bytes, label: str = KEM_LABEL) -> bytes:
        check_kem_label(label)
        validate_p256_point(peer_point)
        private = self._private_kem(label)
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return private.exchange(ec.ECDH(), peer)

    def kem_public_key(self, label: str = KEM_LABEL) -> bytes:
        check_kem_label(label)
        cached = self._kem_public.get(label)
        if cached is None:
            cached = self._kem_public[label] = (
                self._private_kem(label)
                .public_key()
                .public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
            )
        return cached

    def aes_gcm_seal(self, label: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        check_gcm(label, nonce)
        return self._aes_key(label).encrypt(nonce, plaintext, aad)

    def aes_gcm_open(self, label: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        check_gcm(label, nonce)
        key = self._aes_key(label)
        if len(ciphertext) < GCM_TAG_LEN:
            raise HsmDecryptError(f"AES-GCM open failed with key {label!r}")
        try:
            return key.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            # One error for every cause: no oracle on why an open failed.
            raise HsmDecryptError(f"AES-GCM open failed with key {label!r}") from None

    def hmac_sha512(self, label: str, data: bytes) -> bytes:
        check_label(label, HMAC_SHA512_LABELS, "HMAC-SHA512")
        return hmac.new(self._secret(label), data, hashlib.sha512).digest()

    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        check_label(label, HMAC_SHA256_LABELS, "HMAC-SHA256")
        return hmac.new(self._secret(label), data, hashlib.sha256).digest()

    # -- data objects (token_api.DataObjects) --

    def read_data(self, label: str) -> list[bytes]:
        check_data_label(label)
        self._check_open()
        return list(self.data.get(label, []))

    def replace_data(self, label: str, value: bytes) -> None:
        check_data_label(label)
        self._check_open()
        if not self._read_write:
            # The name python-pkcs11 gives CKR_SESSION_READ_ONLY, as `Token` reports it.
            raise HsmError(
                f"writing data object {label!r} failed in token {self._label!r}: SessionReadOnly"
            )
        self.data[label] = [bytes(value)]
        self.data_writes += 1

    # -- inspection --

    def missing_fleet_keys(self, labels: Sequence[str] = FLEET_LABELS) -> list[str]:
        """Labels of fleet keys (of `labels`, default the first epoch's whole fleet) this token
        lacks: empty when fully provisioned."""
        for label in labels:
            check_fleet_label(label)
        self._check_open()
        held = set(self.held_labels())
        return [label for label in labels if label not in held]

    def forget_keys(self) -> None:
        """As `Token.forget_keys`: cached public keys are read again."""
        self._kem_public.clear()


def _satisfies_node_token(token: SoftToken) -> NodeToken:
    return token  # mypy checks that the software token has every operation a node uses
