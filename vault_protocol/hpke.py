"""RFC 9180 HPKE, base mode, DHKEM(P-256, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM.

The receiver runs the whole key schedule here but never holds the private key: the one
Diffie-Hellman step is a callable `ecdh(enc_point) -> x-coordinate` (in a vault node it runs
inside the PKCS#11 token as `CKM_ECDH1_DERIVE`). The sender (`seal_base`) exists for tests and
benchmarks; production clients seal with cryptography's `hpke.Suite` (see `envelope.py`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vault_protocol.errors import DecryptError, InvalidInput, ProtocolError

__all__ = [
    "AEAD_ID",
    "KDF_ID",
    "KEM_ID",
    "MODE_BASE",
    "N_ENC",
    "N_SECRET",
    "Ecdh",
    "KeySchedule",
    "ReceiverContext",
    "SenderContext",
    "derive_key_pair",
    "encap",
    "extract_and_expand",
    "key_schedule",
    "labeled_expand",
    "labeled_extract",
    "open_base",
    "seal_base",
    "setup_base_r",
    "setup_base_s",
    "validate_public_key",
]

Ecdh = Callable[[bytes], bytes]
"""DH(skR, pkE): takes the 65-byte uncompressed point `enc`, returns the 32-byte x-coordinate."""

MODE_BASE = 0x00
KEM_ID = 0x0010  # DHKEM(P-256, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0002  # AES-256-GCM

N_SECRET = 32  # KEM shared secret length
N_ENC = 65  # uncompressed P-256 point
N_PK = 65
N_SK = 32
N_DH = 32  # x-coordinate of the P-256 DH result
N_K = 32  # AES-256 key
N_N = 12  # GCM nonce
N_H = 32  # SHA-256
N_T = 16  # GCM tag

_VERSION_LABEL = b"HPKE-v1"
KEM_SUITE_ID = b"KEM" + KEM_ID.to_bytes(2, "big")
HPKE_SUITE_ID = (
    b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")
)
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_MAX_SEQ = (1 << (8 * N_N)) - 1


# --- RFC 9180 section 4: labeled HKDF -------------------------------------------------------


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869: an empty salt means HashLen zero bytes (HMAC pads it the same way anyway).
    return hmac.digest(salt or bytes(N_H), ikm, "sha256")


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """LabeledExtract(salt, label, ikm) under `suite_id` (KEM or HPKE suite id)."""
    return _hkdf_extract(salt, _VERSION_LABEL + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """LabeledExpand(prk, label, info, L) under `suite_id`."""
    if not 0 < length < 1 << 16:
        raise InvalidInput("expand length out of range")
    labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
    return _hkdf_expand(prk, labeled_info, length)


# --- RFC 9180 section 4.1: DHKEM(P-256, HKDF-SHA256) ----------------------------------------


def validate_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a 65-byte uncompressed P-256 point; `InvalidInput` if it is not one on the curve."""
    # Only the uncompressed form is legal for this KEM (RFC 9180 7.1.1); the curve check stops
    # invalid-curve attacks from making the token's ECDH leak bits of the fleet key.
    if not isinstance(point, bytes) or len(point) != N_PK or point[0] != 0x04:
        raise InvalidInput("expected a 65-byte uncompressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise InvalidInput("point is not on the P-256 curve") from None


def _serialize_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    """ExtractAndExpand(dh, kem_context) -> shared_secret."""
    eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    return labeled_expand(KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, N_SECRET)


def derive_key_pair(ikm: bytes) -> ec.EllipticCurvePrivateKey:
    """DeriveKeyPair(ikm) for P-256 (RFC 9180 7.1.3, rejection sampling with bitmask 0xff)."""
    if len(ikm) < N_SK:
        raise InvalidInput("key derivation input must be at least 32 bytes")
    dkp_prk = labeled_extract(KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    for counter in range(256):
        candidate = labeled_expand(
            KEM_SUITE_ID, dkp_prk, b"candidate", counter.to_bytes(1, "big"), N_SK
        )
        sk = int.from_bytes(candidate, "big")
        if 0 < sk < _P256_ORDER:
            return ec.derive_private_key(sk, ec.SECP256R1())
    raise ProtocolError("DeriveKeyPair found no valid scalar")  # probability ~2^-8192


def encap(pk_r: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """Encap(pkR) -> (shared_secret, enc); the ephemeral key is DeriveKeyPair(rng(32))."""
    pk = validate_public_key(pk_r)
    sk_e = derive_key_pair(_random(rng, N_SK))
    dh = sk_e.exchange(ec.ECDH(), pk)
    enc = _serialize_public_key(sk_e.public_key())
    return extract_and_expand(dh, enc + pk_r), enc


def _decap(enc: bytes, ecdh: Ecdh, pk_r: bytes) -> bytes:
    validate_public_key(enc)
    validate_public_key(pk_r)
    dh = ecdh(enc)
    if not isinstance(dh, bytes) or len(dh) != N_DH:
        raise ProtocolError("ecdh callable returned a result of the wrong length")
    return extract_and_expand(dh, enc + pk_r)


# --- RFC 9180 section 5: key schedule and encryption context --------------------------------


@dataclass(frozen=True, repr=False)
class KeySchedule:
    """Every intermediate value of the base-mode key schedule (exposed for the RFC vectors)."""

    shared_secret: bytes
    key_schedule_context: bytes
    secret: bytes
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes

    def __repr__(self) -> str:
        return "KeySchedule(<secret>)"  # never print key material


def key_schedule(shared_secret: bytes, info: bytes) -> KeySchedule:
    """KeySchedule(mode_base, shared_secret, info, psk="", psk_id="")."""
    psk_id_hash = labeled_extract(HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE_ID, b"", b"info_hash", info)
    context = bytes([MODE_BASE]) + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE_ID, shared_secret, b"secret", b"")
    return KeySchedule(
        shared_secret=shared_secret,
        key_schedule_context=context,
        secret=secret,
        key=labeled_expand(HPKE_SUITE_ID, secret, b"key", context, N_K),
        base_nonce=labeled_expand(HPKE_SUITE_ID, secret, b"base_nonce", context, N_N),
        exporter_secret=labeled_expand(HPKE_SUITE_ID, secret, b"exp", context, N_H),
    )


class _Context:
    __slots__ = ("_aead", "_schedule", "_seq")

    def __init__(self, schedule: KeySchedule) -> None:
        self._schedule = schedule
        self._aead = AESGCM(schedule.key)
        self._seq = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seq={self._seq})"

    @property
    def key_schedule(self) -> KeySchedule:
        return self._schedule

    @property
    def seq(self) -> int:
        return self._seq

    def _nonce(self) -> bytes:
        if self._seq >= _MAX_SEQ:
            # Nonce reuse under one key would break GCM: stop before the counter wraps.
            raise ProtocolError("HPKE message limit reached")
        seq_bytes = self._seq.to_bytes(N_N, "big")
        return bytes(a ^ b for a, b in zip(self._schedule.base_nonce, seq_bytes, strict=True))

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """Export(exporter_context, L) = LabeledExpand(exporter_secret, "sec", context, L)."""
        if not 0 < length <= 255 * N_H:
            raise InvalidInput("export length out of range")
        return labeled_expand(
            HPKE_SUITE_ID, self._schedule.exporter_secret, b"sec", exporter_context, length
        )


class ReceiverContext(_Context):
    """ContextR: opens ciphertexts in sequence order."""

    __slots__ = ()

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        """Open the next ciphertext; `DecryptError` (sequence number unchanged) if it fails."""
        try:
            plaintext = self._aead.decrypt(self._nonce(), ciphertext, aad)
        except InvalidTag:
            raise DecryptError("HPKE ciphertext failed to open") from None
        self._seq += 1
        return plaintext


class SenderContext(_Context):
    """ContextS: seals plaintexts in sequence order."""

    __slots__ = ()

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, aad)
        self._seq += 1
        return ciphertext


def setup_base_r(enc: bytes, info: bytes, ecdh: Ecdh, pk_r: bytes) -> ReceiverContext:
    """SetupBaseR(enc, skR, info) with DH(skR, ·) supplied as `ecdh`; pk_r is pkRm (65 bytes).

    `InvalidInput` if `enc` or `pk_r` is not an uncompressed P-256 point on the curve.
    """
    return ReceiverContext(key_schedule(_decap(enc, ecdh, pk_r), info))


def open_base(
    enc: bytes, ciphertext: bytes, info: bytes, aad: bytes, ecdh: Ecdh, pk_r: bytes
) -> bytes:
    """Single-shot base-mode open (sequence number 0). `DecryptError` if the AEAD fails."""
    return setup_base_r(enc, info, ecdh, pk_r).open(aad, ciphertext)


def setup_base_s(
    pk_r: bytes, info: bytes, rng: Callable[[int], bytes]
) -> tuple[bytes, SenderContext]:
    """SetupBaseS(pkR, info) -> (enc, context); for tests and benchmarks."""
    shared_secret, enc = encap(pk_r, rng)
    return enc, SenderContext(key_schedule(shared_secret, info))


def seal_base(
    pk_r: bytes, info: bytes, aad: bytes, plaintext: bytes, rng: Callable[[int], bytes]
) -> tuple[bytes, bytes]:
    """Single-shot base-mode seal -> (enc, ciphertext); for tests and benchmarks only."""
    enc, context = setup_base_s(pk_r, info, rng)
    return enc, context.seal(aad, plaintext)


def _random(rng: Callable[[int], bytes], n: int) -> bytes:
    out = rng(n)
    if len(out) != n:
        raise ProtocolError("rng returned the wrong number of bytes")
    return out
