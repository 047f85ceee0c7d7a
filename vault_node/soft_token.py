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
from collections.abc import Callable, Mapping
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
    HsmDecryptError,
    HsmError,
    HsmKeyMissing,
    NodeToken,
    check_data_label,
    check_gcm,
    check_label,
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

    @classmethod
    def generate(cls, rng: Rng = os.urandom) -> FleetMaterial:
        """A whole fleet's keys, made from `rng` (deterministic when `rng` is)."""
        scalar = int.from_bytes(rng(40), "big") % (P256_ORDER - 1) + 1  # 64 spare bits: no bias
        secrets = {label: rng(SECRET_SIZES[label]) for label in FLEET_LABELS[1:]}
        return cls(kem_private=scalar.to_bytes(32, "big"), secrets=secrets)

    def validate(self) -> None:
        problems = []
        if self.kem_private is not None and (
            len(self.kem_private) != 32
            or not 1 <= int.from_bytes(self.kem_private, "big") < P256_ORDER
        ):
            problems.append("kem_private must be a 32-byte P-256 scalar in [1, n)")
        for label, value in self.secrets.items():
            if label not in SECRET_SIZES:
                problems.append(f"{label!r} is not a secret fleet key")
            elif label in AES_LABELS and len(value) != 32:
                problems.append(f"{label!r} must be 32 bytes (AES-256)")
            elif not value:
                problems.append(f"{label!r} must not be empty")
        if problems:
            raise ValueError("invalid fleet material: " + "; ".join(problems))


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
        material.validate()
        self._material = material
        self._label = label
        self._read_write = read_write
        self._open = True
        self._kem = (
            None
            if material.kem_private is None
            else ec.derive_private_key(int.from_bytes(material.kem_private, "big"), ec.SECP256R1())
        )
        self._aes = {k: AESGCM(v) for k, v in material.secrets.items() if k in AES_LABELS}
        self._secrets = {k: bytes(v) for k, v in material.secrets.items() if k not in AES_LABELS}
        self._kem_public: bytes | None = None
        self.data: dict[str, list[bytes]] = {}  # data objects by label
        self.data_writes = 0

    def __repr__(self) -> str:
        return f"SoftToken(label={self._label!r}, open={self._open})"

    @property
    def label(self) -> str:
        return self._label

    def same_fleet(self, label: str | None = None) -> SoftToken:
        """Another token holding the same fleet keys (a second node); data objects its own."""
        return SoftToken(self._material, label=label or self._label, read_write=self._read_write)

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

    def _private_kem(self) -> ec.EllipticCurvePrivateKey:
        self._check_open()
        if self._kem is None:
            raise HsmKeyMissing(KEM_LABEL)
        return self._kem

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

    def ecdh(self, peer_point: bytes) -> bytes:
        validate_p256_point(peer_point)
        private = self._private_kem()
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return private.exchange(ec.ECDH(), peer)

    def kem_public_key(self) -> bytes:
        if self._kem_public is None:  # read once and kept, as the real token does
            self._kem_public = (
                self._private_kem()
                .public_key()
                .public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
            )
        return self._kem_public

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

    def missing_fleet_keys(self) -> list[str]:
        """Labels of fleet keys this token lacks (empty when fully provisioned)."""
        self._check_open()
        held = set(self._aes) | set(self._secrets) | ({KEM_LABEL} if self._kem else set())
        return [label for label in FLEET_LABELS if label not in held]


def _satisfies_node_token(token: SoftToken) -> NodeToken:
    return token  # mypy checks that the software token has every operation a node uses
