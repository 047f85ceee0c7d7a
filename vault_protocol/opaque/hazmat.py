"""OPAQUE-3DH internals (RFC 9807, ristretto255-SHA512): the hazardous layer under `opaque`.

Like pyca/cryptography's `hazmat`, these are the building blocks, each exact to the RFC and each
easy to misuse: key derivation from caller-chosen seeds, envelope Store / Recover with a given
nonce, the 3DH input keying material, the preamble and DeriveKeys, fake records from given keys.
The RFC 9807 appendix C vectors check them one by one (tests/unit/test_opaque_vectors.py).
Product code (client/, vault_node/) must use `vault_protocol.opaque` instead, which composes
them into the protocol's messages and validates every input (tests/unit/test_opaque_api.py
checks that neither imports this module).

Sizes: Nh = Nm = Nx = 64, Npk = Nsk = Nok = Noe = 32, Nn = Nseed = 32.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from vault_protocol import oprf, ristretto
from vault_protocol.errors import AuthenticationError, InvalidInput
from vault_protocol.ksf import Ksf
from vault_protocol.ristretto import Element, Scalar

__all__ = [
    "CREDENTIAL_RESPONSE_BYTES",
    "ENVELOPE_BYTES",
    "KE1_BYTES",
    "KE2_BYTES",
    "KE3_BYTES",
    "MAX_U16",
    "NH",
    "NM",
    "NN",
    "NOE",
    "NOK",
    "NPK",
    "NSEED",
    "NSK",
    "NX",
    "RECORD_BYTES",
    "REGISTRATION_REQUEST_BYTES",
    "REGISTRATION_RESPONSE_BYTES",
    "AkeKeys",
    "EnvelopeKeys",
    "RecoveredCredentials",
    "StoreResult",
    "build_fake_record",
    "build_preamble",
    "cleartext_credentials",
    "client_ikm",
    "derive_dh_key_pair",
    "derive_envelope_keys",
    "derive_keys",
    "derive_oprf_key",
    "derive_secret",
    "expand_label",
    "hkdf_expand",
    "hkdf_extract",
    "mac",
    "randomized_password",
    "recover",
    "server_ikm",
    "server_mac_and_expected_client_mac",
    "sha512",
    "split",
    "store",
    "u16",
    "xor",
]

NN = 32  # nonce
NSEED = 32  # key-pair seed
NH = 64  # hash output
NM = 64  # MAC output
NX = 64  # KDF output
NPK = 32  # public key (group element)
NSK = 32  # private key (scalar)
NOK = 32  # OPRF private key
NOE = 32  # OPRF group element

REGISTRATION_REQUEST_BYTES = NOE
REGISTRATION_RESPONSE_BYTES = NOE + NPK
ENVELOPE_BYTES = NN + NM
RECORD_BYTES = NPK + NH + ENVELOPE_BYTES
CREDENTIAL_RESPONSE_BYTES = NOE + NN + NPK + ENVELOPE_BYTES
KE1_BYTES = NOE + NN + NPK
KE2_BYTES = CREDENTIAL_RESPONSE_BYTES + NN + NPK + NM
KE3_BYTES = NM
MAX_U16 = 0xFFFF

_DH_INFO = b"OPAQUE-DeriveDiffieHellmanKeyPair"
_OPRF_KEY_INFO = b"OPAQUE-DeriveKeyPair"


# --- primitives: HMAC / HKDF-SHA512 (RFC 5869) and the RFC 9807 labels -------------------------


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA512."""
    return hmac.new(key, data, hashlib.sha512).digest()


def sha512(data: bytes) -> bytes:
    """SHA-512."""
    return hashlib.sha512(data).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-512 (RFC 5869)."""
    return mac(salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-512 (RFC 5869)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = mac(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def u16(value: int, what: str) -> bytes:
    """A two-byte big-endian length prefix (InvalidInput above 65535)."""
    if value > MAX_U16:
        raise InvalidInput(f"{what} is longer than 65535 bytes")
    return value.to_bytes(2, "big")


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """RFC 9807 section 6.4.2 Expand-Label ("OPAQUE-" || label)."""
    full_label = b"OPAQUE-" + label
    custom_label = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return hkdf_expand(secret, custom_label, length)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """RFC 9807 section 6.4.2 Derive-Secret (Expand-Label to Nx bytes)."""
    return expand_label(secret, label, transcript_hash, NX)


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two strings of equal length."""
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def split(data: bytes, sizes: tuple[int, ...], what: str) -> list[bytes]:
    """`data` cut into fields of `sizes`; InvalidInput unless it is bytes of exactly their sum."""
    if not isinstance(data, bytes):
        raise InvalidInput(f"{what} must be bytes")
    total = sum(sizes)
    if len(data) != total:
        raise InvalidInput(f"{what} must be {total} bytes, got {len(data)}")
    parts = []
    offset = 0
    for size in sizes:
        parts.append(data[offset : offset + size])
        offset += size
    return parts


# --- key derivation -----------------------------------------------------------------------------


def derive_dh_key_pair(seed: bytes) -> tuple[Scalar, Element]:
    """RFC 9807 DeriveDiffieHellmanKeyPair: RFC 9497 DeriveKeyPair with the OPAQUE DH label."""
    return oprf.derive_key_pair(seed, _DH_INFO)


def derive_oprf_key(
    oprf_seed_hmac: Callable[[bytes], bytes], credential_identifier: bytes
) -> Scalar:
    """Per-account OPRF key: DeriveKeyPair(Expand(oprf_seed, id || "OprfKey", Nok), ...).sk.

    With L = Nok = 32 <= 64, HKDF-Expand is one HMAC block: HMAC(oprf_seed, info || 0x01)[:32].
    """
    block = oprf_seed_hmac(credential_identifier + b"OprfKey" + b"\x01")
    if len(block) != NH:
        raise InvalidInput("oprf_seed_hmac must return 64 bytes")
    sk, _ = oprf.derive_key_pair(block[:NOK], _OPRF_KEY_INFO)
    return sk


def randomized_password(oprf_output: bytes, ksf: Ksf) -> bytes:
    """RFC 9807 section 5.2.3: Extract("", oprf_output || Stretch(oprf_output))."""
    return hkdf_extract(b"", oprf_output + ksf.stretch(oprf_output))


@dataclass(frozen=True, repr=False)
class EnvelopeKeys:
    """Keys derived from the randomized password and the envelope nonce (RFC 9807 4.1.2)."""

    masking_key: bytes
    auth_key: bytes
    export_key: bytes
    private_key_seed: bytes

    def __repr__(self) -> str:
        return "EnvelopeKeys(<redacted>)"


def derive_envelope_keys(randomized_pwd: bytes, envelope_nonce: bytes) -> EnvelopeKeys:
    """masking_key, auth_key, export_key and the client key seed."""
    return EnvelopeKeys(
        masking_key=hkdf_expand(randomized_pwd, b"MaskingKey", NH),
        auth_key=hkdf_expand(randomized_pwd, envelope_nonce + b"AuthKey", NH),
        export_key=hkdf_expand(randomized_pwd, envelope_nonce + b"ExportKey", NH),
        private_key_seed=hkdf_expand(randomized_pwd, envelope_nonce + b"PrivateKey", NSEED),
    )


def cleartext_credentials(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> bytes:
    """RFC 9807 CreateCleartextCredentials, serialized; identities default to the public keys."""
    server_id = server_public_key if server_identity is None else server_identity
    client_id = client_public_key if client_identity is None else client_identity
    return (
        server_public_key
        + u16(len(server_id), "server identity")
        + server_id
        + u16(len(client_id), "client identity")
        + client_id
    )


@dataclass(frozen=True, repr=False)
class StoreResult:
    """Output of RFC 9807 Store."""

    envelope: bytes
    client_public_key: bytes
    masking_key: bytes
    export_key: bytes

    def __repr__(self) -> str:
        return "StoreResult(<redacted>)"


def store(
    randomized_pwd: bytes,
    server_public_key: bytes,
    envelope_nonce: bytes,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> StoreResult:
    """RFC 9807 Store with a given envelope nonce."""
    keys = derive_envelope_keys(randomized_pwd, envelope_nonce)
    _, client_public_key = derive_dh_key_pair(keys.private_key_seed)
    creds = cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    auth_tag = mac(keys.auth_key, envelope_nonce + creds)
    return StoreResult(
        envelope=envelope_nonce + auth_tag,
        client_public_key=client_public_key,
        masking_key=keys.masking_key,
        export_key=keys.export_key,
    )


@dataclass(frozen=True, repr=False)
class RecoveredCredentials:
    """Output of RFC 9807 Recover."""

    client_private_key: bytes
    client_public_key: bytes
    export_key: bytes

    def __repr__(self) -> str:
        return "RecoveredCredentials(<redacted>)"


def recover(
    randomized_pwd: bytes,
    server_public_key: bytes,
    envelope: bytes,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> RecoveredCredentials:
    """RFC 9807 Recover; a wrong password (bad auth tag) raises AuthenticationError."""
    envelope_nonce, auth_tag = split(envelope, (NN, NM), "envelope")
    keys = derive_envelope_keys(randomized_pwd, envelope_nonce)
    client_private_key, client_public_key = derive_dh_key_pair(keys.private_key_seed)
    creds = cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    expected_tag = mac(keys.auth_key, envelope_nonce + creds)
    # Security: constant-time compare, and one error whatever was wrong (no oracle).
    if not hmac.compare_digest(expected_tag, auth_tag):
        raise AuthenticationError("envelope could not be opened (wrong password?)")
    return RecoveredCredentials(client_private_key, client_public_key, keys.export_key)


def build_preamble(
    context: bytes,
    client_identity: bytes,
    ke1: bytes,
    server_identity: bytes,
    credential_response: bytes,
    server_nonce: bytes,
    server_public_keyshare: bytes,
) -> bytes:
    """RFC 9807 section 6.4.2 Preamble (identities already defaulted to public keys)."""
    return (
        b"OPAQUEv1-"
        + u16(len(context), "context")
        + context
        + u16(len(client_identity), "client identity")
        + client_identity
        + ke1
        + u16(len(server_identity), "server identity")
        + server_identity
        + credential_response
        + server_nonce
        + server_public_keyshare
    )


@dataclass(frozen=True, repr=False)
class AkeKeys:
    """RFC 9807 DeriveKeys output (Km2 = server_mac_key, Km3 = client_mac_key)."""

    handshake_secret: bytes
    server_mac_key: bytes
    client_mac_key: bytes
    session_key: bytes

    def __repr__(self) -> str:
        return "AkeKeys(<redacted>)"


def derive_keys(ikm: bytes, preamble: bytes) -> AkeKeys:
    """RFC 9807 section 6.4.2 DeriveKeys."""
    prk = hkdf_extract(b"", ikm)
    preamble_hash = sha512(preamble)
    handshake_secret = derive_secret(prk, b"HandshakeSecret", preamble_hash)
    session_key = derive_secret(prk, b"SessionKey", preamble_hash)
    return AkeKeys(
        handshake_secret=handshake_secret,
        server_mac_key=derive_secret(handshake_secret, b"ServerMAC", b""),
        client_mac_key=derive_secret(handshake_secret, b"ClientMAC", b""),
        session_key=session_key,
    )


def server_ikm(
    server_private_keyshare: Scalar,
    server_private_key: Scalar,
    client_public_keyshare: Element,
    client_public_key: Element,
) -> bytes:
    """3DH input keying material on the server: dh1 || dh2 || dh3."""
    return (
        ristretto.scalar_mult(server_private_keyshare, client_public_keyshare)
        + ristretto.scalar_mult(server_private_key, client_public_keyshare)
        + ristretto.scalar_mult(server_private_keyshare, client_public_key)
    )


def client_ikm(
    client_private_keyshare: Scalar,
    client_private_key: Scalar,
    server_public_keyshare: Element,
    server_public_key: Element,
) -> bytes:
    """3DH input keying material on the client: dh1 || dh2 || dh3."""
    return (
        ristretto.scalar_mult(client_private_keyshare, server_public_keyshare)
        + ristretto.scalar_mult(client_private_keyshare, server_public_key)
        + ristretto.scalar_mult(client_private_key, server_public_keyshare)
    )


def server_mac_and_expected_client_mac(keys: AkeKeys, preamble: bytes) -> tuple[bytes, bytes]:
    """RFC 9807 section 6.4.3: the server MAC over the preamble, the client MAC over both."""
    server_mac = mac(keys.server_mac_key, sha512(preamble))
    client_mac = mac(keys.client_mac_key, sha512(preamble + server_mac))
    return server_mac, client_mac


# --- fake records (RFC 9807 section 10.9) ------------------------------------------------------


def build_fake_record(client_public_key: bytes, masking_key: bytes) -> bytes:
    """RFC 9807 section 10.9: a record for an unknown account (zero envelope)."""
    ristretto.decode_element(client_public_key)
    if len(masking_key) != NH:
        raise InvalidInput("masking key must be 64 bytes")
    return client_public_key + masking_key + bytes(ENVELOPE_BYTES)
