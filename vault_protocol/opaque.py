"""OPAQUE-3DH (RFC 9807), ciphersuite ristretto255-SHA512, pure (no I/O, no clock, no globals).

Implemented from RFC 9807:

* section 4 (cryptographic dependencies): OPRF ristretto255-SHA512 (RFC 9497), HKDF-SHA512,
  HMAC-SHA512, SHA-512, a pluggable KSF (`vault_protocol.ksf`);
* section 4.1 (key recovery): envelope `Store` / `Recover`, CleartextCredentials;
* section 5 (registration): CreateRegistrationRequest, CreateRegistrationResponse (per-account
  OPRF key from `oprf_seed`), FinalizeRegistrationRequest;
* section 6.3 (online authenticated key exchange, 3DH): KE1/KE2/KE3, credential request and
  response with response masking, Preamble, DeriveKeys (Expand-Label / Derive-Secret), MACs;
* section 6.4.2 and 10.9 (client enumeration): fake records for unknown accounts.

Sizes: Nh = Nm = Nx = 64, Npk = Nsk = Nok = Noe = 32, Nn = Nseed = 32. Every wire message is a
byte string laid out exactly as in the RFC; parsers check exact lengths and validate every group
element (`InvalidInput`). A wrong password or a bad MAC is `AuthenticationError`. Randomness
comes from `rng`, drawn in the RFC's order, so a test can replay a vector by feeding its inputs.
The server's secrets reach this module only through the `ServerKeys` protocol (an HSM in
production: the OPRF seed never leaves the token, only HMACs under it do).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vault_protocol import oprf, ristretto
from vault_protocol.errors import AuthenticationError, InvalidInput
from vault_protocol.ksf import Argon2idKsf, IdentityKsf, Ksf
from vault_protocol.ristretto import Element, Scalar

__all__ = [
    "CREDENTIAL_RESPONSE_BYTES",
    "DEFAULT_CONTEXT",
    "ENVELOPE_BYTES",
    "KE1_BYTES",
    "KE2_BYTES",
    "KE3_BYTES",
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
    "Argon2idKsf",
    "ClientLoginState",
    "ClientRegState",
    "EnvelopeKeys",
    "IdentityKsf",
    "Ksf",
    "OpaqueConfig",
    "RecoveredCredentials",
    "ServerKeys",
    "ServerLoginState",
    "SoftwareServerKeys",
    "StoreResult",
    "build_fake_record",
    "build_preamble",
    "cleartext_credentials",
    "client_ikm",
    "derive_ake_key_pair",
    "derive_dh_key_pair",
    "derive_envelope_keys",
    "derive_keys",
    "derive_oprf_key",
    "fake_record",
    "login_finish",
    "login_start",
    "randomized_password",
    "recover",
    "registration_finish",
    "registration_start",
    "server_ikm",
    "server_login_finish",
    "server_login_start",
    "server_registration_response",
    "store",
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

DEFAULT_CONTEXT = b"BKV-v1"

_DH_INFO = b"OPAQUE-DeriveDiffieHellmanKeyPair"
_OPRF_KEY_INFO = b"OPAQUE-DeriveKeyPair"
_AKE_SEED_LABEL = b"bkv-v1 ake-seed"
_MAX_U16 = 0xFFFF

Rng = Callable[[int], bytes]


# --- primitives: HMAC / HKDF-SHA512 (RFC 5869) and the RFC 9807 labels -------------------------


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha512).digest()


def _hash(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return _mac(salt, ikm)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = _mac(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def _u16(value: int, what: str) -> bytes:
    if value > _MAX_U16:
        raise InvalidInput(f"{what} is longer than 65535 bytes")
    return value.to_bytes(2, "big")


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full_label = b"OPAQUE-" + label
    custom_label = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return _expand(secret, custom_label, length)


def _derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return _expand_label(secret, label, transcript_hash, NX)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _split(data: bytes, sizes: tuple[int, ...], what: str) -> list[bytes]:
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


# --- configuration and keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpaqueConfig:
    """OPAQUE parameters both sides must agree on.

    context: application context bound into every handshake's preamble (<= 65535 bytes).
    ksf: the client's key stretching function (Argon2id in production).
    """

    context: bytes = DEFAULT_CONTEXT
    ksf: Ksf = field(default_factory=Argon2idKsf)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInput naming every problem at once."""
        problems: list[str] = []
        if not isinstance(self.context, bytes):
            problems.append("context must be bytes")
        elif len(self.context) > _MAX_U16:
            problems.append("context must be at most 65535 bytes")
        if not callable(getattr(self.ksf, "stretch", None)):
            problems.append("ksf must have a stretch(bytes) -> bytes method")
        if problems:
            raise InvalidInput("OpaqueConfig: " + "; ".join(problems))


class ServerKeys(Protocol):
    """The server's long-term OPAQUE secrets; in production they live in the HSM."""

    def oprf_seed_hmac(self, data: bytes) -> bytes:
        """HMAC-SHA512(oprf_seed, data), 64 bytes."""
        ...

    @property
    def server_private_key(self) -> bytes:
        """The AKE private key (a ristretto255 scalar)."""
        ...

    @property
    def server_public_key(self) -> bytes:
        """The AKE public key (a ristretto255 element)."""
        ...


@dataclass(frozen=True)
class SoftwareServerKeys:
    """In-memory `ServerKeys` for tests and benchmarks (production keeps the seed in an HSM)."""

    oprf_seed: bytes = field(repr=False)
    server_private_key: bytes = field(repr=False)
    server_public_key: bytes

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInput naming every problem at once (never echoing key material)."""
        problems: list[str] = []
        if len(self.oprf_seed) < 32:
            problems.append("oprf_seed must be at least 32 bytes")
        try:
            sk = ristretto.decode_scalar(self.server_private_key)
            ristretto.decode_element(self.server_public_key)
            if ristretto.base_mult(sk) != self.server_public_key:
                problems.append("server_public_key does not match server_private_key")
        except InvalidInput as exc:
            problems.append(f"server key pair invalid: {exc}")
        if problems:
            raise InvalidInput("SoftwareServerKeys: " + "; ".join(problems))

    @classmethod
    def generate(cls, rng: Rng) -> SoftwareServerKeys:
        """Fresh random keys: a 64-byte OPRF seed and a derived AKE key pair."""
        oprf_seed = rng(NH)
        sk, pk = derive_dh_key_pair(rng(NSEED))
        return cls(oprf_seed=oprf_seed, server_private_key=sk, server_public_key=pk)

    def oprf_seed_hmac(self, data: bytes) -> bytes:
        """HMAC-SHA512 under the OPRF seed."""
        return _mac(self.oprf_seed, data)


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


def derive_ake_key_pair(ake_seed_hmac: Callable[[bytes], bytes]) -> tuple[Scalar, Element]:
    """The server's AKE key pair: DeriveDiffieHellmanKeyPair(HMAC(ake_seed, label)[:32])."""
    block = ake_seed_hmac(_AKE_SEED_LABEL)
    if len(block) < NSEED:
        raise InvalidInput("ake_seed_hmac must return at least 32 bytes")
    return derive_dh_key_pair(block[:NSEED])


def randomized_password(oprf_output: bytes, ksf: Ksf) -> bytes:
    """RFC 9807 section 5.2.3: Extract("", oprf_output || Stretch(oprf_output))."""
    return _extract(b"", oprf_output + ksf.stretch(oprf_output))


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
        masking_key=_expand(randomized_pwd, b"MaskingKey", NH),
        auth_key=_expand(randomized_pwd, envelope_nonce + b"AuthKey", NH),
        export_key=_expand(randomized_pwd, envelope_nonce + b"ExportKey", NH),
        private_key_seed=_expand(randomized_pwd, envelope_nonce + b"PrivateKey", NSEED),
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
        + _u16(len(server_id), "server identity")
        + server_id
        + _u16(len(client_id), "client identity")
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
    auth_tag = _mac(keys.auth_key, envelope_nonce + creds)
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
    envelope_nonce, auth_tag = _split(envelope, (NN, NM), "envelope")
    keys = derive_envelope_keys(randomized_pwd, envelope_nonce)
    client_private_key, client_public_key = derive_dh_key_pair(keys.private_key_seed)
    creds = cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    expected_tag = _mac(keys.auth_key, envelope_nonce + creds)
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
        + _u16(len(context), "context")
        + context
        + _u16(len(client_identity), "client identity")
        + client_identity
        + ke1
        + _u16(len(server_identity), "server identity")
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
    prk = _extract(b"", ikm)
    preamble_hash = _hash(preamble)
    handshake_secret = _derive_secret(prk, b"HandshakeSecret", preamble_hash)
    session_key = _derive_secret(prk, b"SessionKey", preamble_hash)
    return AkeKeys(
        handshake_secret=handshake_secret,
        server_mac_key=_derive_secret(handshake_secret, b"ServerMAC", b""),
        client_mac_key=_derive_secret(handshake_secret, b"ClientMAC", b""),
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


def _server_mac_and_expected_client_mac(keys: AkeKeys, preamble: bytes) -> tuple[bytes, bytes]:
    server_mac = _mac(keys.server_mac_key, _hash(preamble))
    client_mac = _mac(keys.client_mac_key, _hash(preamble + server_mac))
    return server_mac, client_mac


# --- registration -------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ClientRegState:
    """What the client keeps between registration_start and registration_finish."""

    password: bytes
    blind: Scalar

    def __repr__(self) -> str:
        return "ClientRegState(<redacted>)"


def registration_start(password: bytes, rng: Rng) -> tuple[ClientRegState, bytes]:
    """RFC 9807 CreateRegistrationRequest: (state, RegistrationRequest = blinded_element)."""
    blind, blinded_element = oprf.blind(password, rng)
    return ClientRegState(password=password, blind=blind), blinded_element


def server_registration_response(
    request: bytes, credential_identifier: bytes, keys: ServerKeys
) -> bytes:
    """RFC 9807 CreateRegistrationResponse: evaluated_element || server_public_key."""
    (blinded_element,) = _split(request, (NOE,), "registration request")
    oprf_key = derive_oprf_key(keys.oprf_seed_hmac, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, blinded_element)
    return evaluated + keys.server_public_key


def registration_finish(
    state: ClientRegState,
    response: bytes,
    config: OpaqueConfig,
    rng: Rng,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> tuple[bytes, bytes]:
    """RFC 9807 FinalizeRegistrationRequest: (RegistrationRecord, export_key)."""
    evaluated, server_public_key = _split(response, (NOE, NPK), "registration response")
    ristretto.decode_element(server_public_key)
    oprf_output = oprf.finalize(state.password, state.blind, evaluated)
    rwd = randomized_password(oprf_output, config.ksf)
    envelope_nonce = rng(NN)
    if len(envelope_nonce) != NN:
        raise InvalidInput("rng returned the wrong number of bytes")
    result = store(rwd, server_public_key, envelope_nonce, server_identity, client_identity)
    record = result.client_public_key + result.masking_key + result.envelope
    return record, result.export_key


def build_fake_record(client_public_key: bytes, masking_key: bytes) -> bytes:
    """RFC 9807 section 10.9: a record for an unknown account (zero envelope)."""
    ristretto.decode_element(client_public_key)
    if len(masking_key) != NH:
        raise InvalidInput("masking key must be 64 bytes")
    return client_public_key + masking_key + bytes(ENVELOPE_BYTES)


def fake_record(rng: Rng) -> bytes:
    """A fresh random fake record, indistinguishable on the wire from a real one."""
    _, client_public_key = derive_dh_key_pair(rng(NSEED))
    return build_fake_record(client_public_key, rng(NH))


# --- login --------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ClientLoginState:
    """What the client keeps between login_start and login_finish."""

    password: bytes
    blind: Scalar
    client_secret: Scalar
    ke1: bytes

    def __repr__(self) -> str:
        return "ClientLoginState(<redacted>)"


@dataclass(frozen=True, repr=False)
class ServerLoginState:
    """What the server keeps between KE2 and KE3 (sealed in a ticket by the node)."""

    expected_client_mac: bytes
    session_key: bytes

    def __repr__(self) -> str:
        return "ServerLoginState(<redacted>)"


def login_start(password: bytes, rng: Rng) -> tuple[ClientLoginState, bytes]:
    """RFC 9807 GenerateKE1: KE1 = blinded_element || client_nonce || client_public_keyshare."""
    blind, blinded_element = oprf.blind(password, rng)
    client_nonce = rng(NN)
    keyshare_seed = rng(NSEED)
    if len(client_nonce) != NN or len(keyshare_seed) != NSEED:
        raise InvalidInput("rng returned the wrong number of bytes")
    client_secret, client_keyshare = derive_dh_key_pair(keyshare_seed)
    ke1 = blinded_element + client_nonce + client_keyshare
    state = ClientLoginState(password=password, blind=blind, client_secret=client_secret, ke1=ke1)
    return state, ke1


def _parse_record(record: bytes) -> tuple[bytes, bytes, bytes]:
    client_public_key, masking_key, envelope = _split(
        record, (NPK, NH, ENVELOPE_BYTES), "registration record"
    )
    ristretto.decode_element(client_public_key)
    return client_public_key, masking_key, envelope


def _parse_ke1(ke1: bytes) -> tuple[bytes, bytes, bytes]:
    blinded, client_nonce, client_keyshare = _split(ke1, (NOE, NN, NPK), "KE1")
    ristretto.decode_element(blinded)
    ristretto.decode_element(client_keyshare)
    return blinded, client_nonce, client_keyshare


def server_login_start(
    record: bytes,
    credential_identifier: bytes,
    ke1: bytes,
    keys: ServerKeys,
    config: OpaqueConfig,
    rng: Rng,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> tuple[bytes, ServerLoginState]:
    """RFC 9807 GenerateKE2 (a fake record from `fake_record` works the same way)."""
    client_public_key, masking_key, envelope = _parse_record(record)
    blinded, _, client_keyshare = _parse_ke1(ke1)
    server_public_key = keys.server_public_key

    # CreateCredentialResponse
    oprf_key = derive_oprf_key(keys.oprf_seed_hmac, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, blinded)
    masking_nonce = rng(NN)
    if len(masking_nonce) != NN:
        raise InvalidInput("rng returned the wrong number of bytes")
    pad = _expand(masking_key, masking_nonce + b"CredentialResponsePad", NPK + ENVELOPE_BYTES)
    # Security: masking hides the envelope and server key so KE2 is the same for unknown accounts.
    masked_response = _xor(pad, server_public_key + envelope)
    credential_response = evaluated + masking_nonce + masked_response

    # AuthServerRespond
    server_nonce = rng(NN)
    keyshare_seed = rng(NSEED)
    if len(server_nonce) != NN or len(keyshare_seed) != NSEED:
        raise InvalidInput("rng returned the wrong number of bytes")
    server_secret, server_keyshare = derive_dh_key_pair(keyshare_seed)
    preamble = build_preamble(
        config.context,
        client_public_key if client_identity is None else client_identity,
        ke1,
        server_public_key if server_identity is None else server_identity,
        credential_response,
        server_nonce,
        server_keyshare,
    )
    ikm = server_ikm(server_secret, keys.server_private_key, client_keyshare, client_public_key)
    ake = derive_keys(ikm, preamble)
    server_mac, expected_client_mac = _server_mac_and_expected_client_mac(ake, preamble)
    ke2 = credential_response + server_nonce + server_keyshare + server_mac
    return ke2, ServerLoginState(expected_client_mac, ake.session_key)


def login_finish(
    state: ClientLoginState,
    ke2: bytes,
    config: OpaqueConfig,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> tuple[bytes, bytes, bytes]:
    """RFC 9807 GenerateKE3: (KE3 = client_mac, session_key, export_key).

    Raises AuthenticationError for a wrong password or a server that fails to authenticate,
    InvalidInput for a malformed KE2.
    """
    evaluated, masking_nonce, masked_response, server_nonce, server_keyshare, server_mac = _split(
        ke2, (NOE, NN, NPK + ENVELOPE_BYTES, NN, NPK, NM), "KE2"
    )
    ristretto.decode_element(evaluated)
    ristretto.decode_element(server_keyshare)

    # RecoverCredentials
    oprf_output = oprf.finalize(state.password, state.blind, evaluated)
    rwd = randomized_password(oprf_output, config.ksf)
    masking_key = _expand(rwd, b"MaskingKey", NH)
    pad = _expand(masking_key, masking_nonce + b"CredentialResponsePad", NPK + ENVELOPE_BYTES)
    unmasked = _xor(pad, masked_response)
    server_public_key, envelope = unmasked[:NPK], unmasked[NPK:]
    recovered = recover(rwd, server_public_key, envelope, server_identity, client_identity)
    try:
        ristretto.decode_element(server_public_key)
    except InvalidInput as exc:  # only reachable with a forged envelope; same answer as a bad MAC
        raise AuthenticationError("server could not be authenticated") from exc

    # AuthClientFinalize
    preamble = build_preamble(
        config.context,
        recovered.client_public_key if client_identity is None else client_identity,
        state.ke1,
        server_public_key if server_identity is None else server_identity,
        evaluated + masking_nonce + masked_response,
        server_nonce,
        server_keyshare,
    )
    ikm = client_ikm(
        state.client_secret, recovered.client_private_key, server_keyshare, server_public_key
    )
    ake = derive_keys(ikm, preamble)
    expected_server_mac, client_mac = _server_mac_and_expected_client_mac(ake, preamble)
    # Security: the server proves it holds the server key and saw the same transcript.
    if not hmac.compare_digest(expected_server_mac, server_mac):
        raise AuthenticationError("server could not be authenticated")
    return client_mac, ake.session_key, recovered.export_key


def server_login_finish(expected_client_mac: bytes, ke3: bytes) -> None:
    """RFC 9807 ServerFinish: constant-time check of the client MAC (AuthenticationError)."""
    (client_mac,) = _split(ke3, (KE3_BYTES,), "KE3")
    if len(expected_client_mac) != KE3_BYTES:
        raise InvalidInput("expected client MAC must be 64 bytes")
    # Security: constant-time compare so a forger learns nothing from timing.
    if not hmac.compare_digest(expected_client_mac, client_mac):
        raise AuthenticationError("client authentication failed")
