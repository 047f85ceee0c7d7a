"""A software token: the node's token operations with the fleet keys in process memory.

The same operations as `vault_node.hsm.Token` (`records.TokenOps` and `checkpoint.DataObjects`),
for unit tests, the in-process cluster and the load tester's server-work ceiling, as Juicebox
keeps a software HSM beside the real one. Never for a serving node: its keys are ordinary
Python bytes, readable by anything in the process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_node.hsm import AES_LABELS, DATA_LABELS, HMAC_SHA256_LABELS, HMAC_SHA512_LABELS


class SoftToken:
    """Fleet keys made at random (`rng`), or shared with another `SoftToken` of one fleet."""

    def __init__(self, rng: Callable[[int], bytes] = os.urandom) -> None:
        self._kem = ec.derive_private_key(
            int.from_bytes(rng(32), "big") % (2**256 - 2**224) + 1, ec.SECP256R1()
        )
        self._aes = {label: rng(32) for label in sorted(AES_LABELS)}
        self._secrets = {
            label: rng(32) for label in sorted(HMAC_SHA512_LABELS | HMAC_SHA256_LABELS)
        }
        self.data: dict[str, list[bytes]] = {}  # data objects by label
        self.data_writes = 0

    def same_fleet(self) -> SoftToken:
        """Another token holding the same fleet keys (a second node), data objects its own."""
        twin = SoftToken.__new__(SoftToken)
        twin._kem, twin._aes, twin._secrets = self._kem, self._aes, self._secrets
        twin.data, twin.data_writes = {}, 0
        return twin

    def ecdh(self, peer_point: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return self._kem.exchange(ec.ECDH(), peer)

    def kem_public_key(self) -> bytes:
        return self._kem.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def aes_gcm_seal(self, label: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return AESGCM(self._aes[label]).encrypt(nonce, plaintext, aad)

    def aes_gcm_open(self, label: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return AESGCM(self._aes[label]).decrypt(nonce, ciphertext, aad)

    def hmac_sha512(self, label: str, data: bytes) -> bytes:
        if label not in HMAC_SHA512_LABELS:
            raise ValueError(f"{label!r} is not an HMAC-SHA512 key")
        return hmac.new(self._secrets[label], data, hashlib.sha512).digest()

    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        if label not in HMAC_SHA256_LABELS:
            raise ValueError(f"{label!r} is not an HMAC-SHA256 key")
        return hmac.new(self._secrets[label], data, hashlib.sha256).digest()

    def read_data(self, label: str) -> list[bytes]:
        if label not in DATA_LABELS:
            raise ValueError(f"{label!r} is not a data object of the node")
        return list(self.data.get(label, []))

    def replace_data(self, label: str, value: bytes) -> None:
        if label not in DATA_LABELS:
            raise ValueError(f"{label!r} is not a data object of the node")
        self.data[label] = [bytes(value)]
        self.data_writes += 1
