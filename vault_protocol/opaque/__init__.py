"""OPAQUE-3DH (RFC 9807), ciphersuite ristretto255-SHA512: the API client and node call.

Pure (no I/O, no clock, no globals). This is the safe surface, as pyca/cryptography's recipes
are: whole protocol steps and whole wire messages, each input validated.

* registration: `registration_start` (client) -> `server_registration_response` (server) ->
  `registration_finish` (client: the RegistrationRecord to upload, and the export key);
* login: `login_start` (client: KE1) -> `server_login_start` (server: KE2 and the state it
  keeps) -> `login_finish` (client: KE3, session key, export key) -> `server_login_finish`;
* a fake record for unknown accounts (`fake_record`, RFC 9807 sections 6.4.2 and 10.9);
* the server's keys (`ServerKeys`; `SoftwareServerKeys` in memory; `derive_ake_key_pair`);
* typed messages: `parse_ke1` / `KE1` and `parse_registration_record` / `RegistrationRecord`
  check exact lengths and every group element before a server acts on the bytes.

Every wire message is a byte string laid out exactly as in the RFC; parsers check exact lengths
and validate every group element (`InvalidInput`). A wrong password or a bad MAC is
`AuthenticationError`. Randomness comes from `rng`, drawn in the RFC's order, so a test can
replay a vector by feeding its inputs. The server's secrets reach this module only through the
`ServerKeys` protocol (an HSM in production: the OPRF seed never leaves the token, only HMACs
under it do).

The RFC's building blocks (OPRF key derivation, envelope Store / Recover, 3DH, the preamble,
DeriveKeys, key pairs and fake records from given seeds) are in `vault_protocol.opaque.hazmat`,
for the RFC vector tests; client/ and vault_node/ do not import it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vault_protocol import oprf, ristretto
from vault_protocol.errors import AuthenticationError, InvalidInput
from vault_protocol.ksf import Argon2idKsf, IdentityKsf, Ksf
from vault_protocol.opaque import hazmat
from vault_protocol.opaque.hazmat import (
    ENVELOPE_BYTES,
    KE1_BYTES,
    KE2_BYTES,
    KE3_BYTES,
    MAX_U16,
    NH,
    NM,
    NN,
    NOE,
    NPK,
    NSEED,
    RECORD_BYTES,
    REGISTRATION_REQUEST_BYTES,
    REGISTRATION_RESPONSE_BYTES,
)
from vault_protocol.ristretto import Element, Scalar

__all__ = [
    "DEFAULT_CONTEXT",
    "KE1",
    "KE1_BYTES",
    "KE2_BYTES",
    "KE3_BYTES",
    "RECORD_BYTES",
    "REGISTRATION_REQUEST_BYTES",
    "REGISTRATION_RESPONSE_BYTES",
    "Argon2idKsf",
    "ClientLoginState",
    "ClientRegState",
    "IdentityKsf",
    "Ksf",
    "OpaqueConfig",
    "RegistrationRecord",
    "ServerKeys",
    "ServerLoginState",
    "SoftwareServerKeys",
    "derive_ake_key_pair",
    "fake_record",
    "login_finish",
    "login_start",
    "parse_ke1",
    "parse_registration_record",
    "registration_finish",
    "registration_start",
    "server_login_finish",
    "server_login_start",
    "server_registration_response",
]

DEFAULT_CONTEXT = b"BKV-v1"

_AKE_SEED_LABEL = b"bkv-v1 ake-seed"

Rng = Callable[[int], bytes]


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
        elif len(self.context) > MAX_U16:
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
        sk, pk = hazmat.derive_dh_key_pair(rng(NSEED))
        return cls(oprf_seed=oprf_seed, server_private_key=sk, server_public_key=pk)

    def oprf_seed_hmac(self, data: bytes) -> bytes:
        """HMAC-SHA512 under the OPRF seed."""
        return hazmat.mac(self.oprf_seed, data)


def derive_ake_key_pair(ake_seed_hmac: Callable[[bytes], bytes]) -> tuple[Scalar, Element]:
    """The server's AKE key pair: DeriveDiffieHellmanKeyPair(HMAC(ake_seed, label)[:32])."""
    block = ake_seed_hmac(_AKE_SEED_LABEL)
    if len(block) < NSEED:
        raise InvalidInput("ake_seed_hmac must return at least 32 bytes")
    return hazmat.derive_dh_key_pair(block[:NSEED])


# --- typed messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KE1:
    """RFC 9807 KE1: the client's credential request and key share, valid by construction.

    blinded_element: the OPRF request (a ristretto255 element).
    client_nonce: 32 random bytes.
    client_public_keyshare: the client's ephemeral 3DH public key (a ristretto255 element).
    """

    blinded_element: bytes
    client_nonce: bytes
    client_public_keyshare: bytes

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInput for a field of the wrong length or an invalid group element."""
        for name, value, size in (
            ("blinded_element", self.blinded_element, NOE),
            ("client_nonce", self.client_nonce, NN),
            ("client_public_keyshare", self.client_public_keyshare, NPK),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise InvalidInput(f"KE1 {name} must be {size} bytes")
        try:
            ristretto.decode_element(self.blinded_element)
            ristretto.decode_element(self.client_public_keyshare)
        except InvalidInput as exc:
            raise InvalidInput("KE1 holds an invalid group element") from exc

    def to_bytes(self) -> bytes:
        """The wire form: blinded_element || client_nonce || client_public_keyshare."""
        return self.blinded_element + self.client_nonce + self.client_public_keyshare


def parse_ke1(data: bytes) -> KE1:
    """KE1 from its wire form; InvalidInput unless exactly KE1_BYTES with valid elements.

    >>> import os
    >>> _, ke1 = login_start(b"password", os.urandom)
    >>> parse_ke1(ke1).to_bytes() == ke1
    True
    >>> parse_ke1(ke1[:-1])
    Traceback (most recent call last):
    ...
    vault_protocol.errors.InvalidInput: KE1 must be 96 bytes, got 95
    """
    blinded, client_nonce, client_keyshare = hazmat.split(data, (NOE, NN, NPK), "KE1")
    return KE1(blinded, client_nonce, client_keyshare)


@dataclass(frozen=True, repr=False)
class RegistrationRecord:
    """RFC 9807 RegistrationRecord, what the server stores per account; valid by construction.

    client_public_key: the client's long-term public key (a ristretto255 element).
    masking_key: 64 bytes that mask the credential response.
    envelope: envelope_nonce || auth_tag (96 bytes; all zero in a fake record).
    """

    client_public_key: bytes
    masking_key: bytes
    envelope: bytes

    def __post_init__(self) -> None:
        self.validate()

    def __repr__(self) -> str:
        return "RegistrationRecord(<redacted>)"

    def validate(self) -> None:
        """Raise InvalidInput for a field of the wrong length or an invalid client public key."""
        for name, value, size in (
            ("client_public_key", self.client_public_key, NPK),
            ("masking_key", self.masking_key, NH),
            ("envelope", self.envelope, ENVELOPE_BYTES),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise InvalidInput(f"registration record {name} must be {size} bytes")
        try:
            ristretto.decode_element(self.client_public_key)
        except InvalidInput as exc:
            raise InvalidInput("registration record holds an invalid client public key") from exc

    def to_bytes(self) -> bytes:
        """The wire form: client_public_key || masking_key || envelope."""
        return self.client_public_key + self.masking_key + self.envelope


def parse_registration_record(data: bytes) -> RegistrationRecord:
    """A RegistrationRecord from its wire form; InvalidInput unless exactly RECORD_BYTES with a
    valid client public key (the envelope is opaque to the server and checked by length only)."""
    client_public_key, masking_key, envelope = hazmat.split(
        data, (NPK, NH, ENVELOPE_BYTES), "registration record"
    )
    return RegistrationRecord(client_public_key, masking_key, envelope)


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
    (blinded_element,) = hazmat.split(request, (NOE,), "registration request")
    oprf_key = hazmat.derive_oprf_key(keys.oprf_seed_hmac, credential_identifier)
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
    evaluated, server_public_key = hazmat.split(response, (NOE, NPK), "registration response")
    ristretto.decode_element(server_public_key)
    oprf_output = oprf.finalize(state.password, state.blind, evaluated)
    rwd = hazmat.randomized_password(oprf_output, config.ksf)
    envelope_nonce = rng(NN)
    if len(envelope_nonce) != NN:
        raise InvalidInput("rng returned the wrong number of bytes")
    result = hazmat.store(rwd, server_public_key, envelope_nonce, server_identity, client_identity)
    record = RegistrationRecord(result.client_public_key, result.masking_key, result.envelope)
    return record.to_bytes(), result.export_key


def fake_record(rng: Rng) -> bytes:
    """A fresh random fake record, indistinguishable on the wire from a real one."""
    _, client_public_key = hazmat.derive_dh_key_pair(rng(NSEED))
    return hazmat.build_fake_record(client_public_key, rng(NH))


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
    client_secret, client_keyshare = hazmat.derive_dh_key_pair(keyshare_seed)
    ke1 = KE1(blinded_element, client_nonce, client_keyshare).to_bytes()
    state = ClientLoginState(password=password, blind=blind, client_secret=client_secret, ke1=ke1)
    return state, ke1


def server_login_start(
    record: bytes | RegistrationRecord,
    credential_identifier: bytes,
    ke1: bytes | KE1,
    keys: ServerKeys,
    config: OpaqueConfig,
    rng: Rng,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> tuple[bytes, ServerLoginState]:
    """RFC 9807 GenerateKE2 (a fake record from `fake_record` works the same way).

    `record` and `ke1` are wire bytes (parsed and checked here, InvalidInput) or values already
    parsed with `parse_registration_record` / `parse_ke1`.
    """
    rec = record if isinstance(record, RegistrationRecord) else parse_registration_record(record)
    request = ke1 if isinstance(ke1, KE1) else parse_ke1(ke1)
    server_public_key = keys.server_public_key

    # CreateCredentialResponse
    oprf_key = hazmat.derive_oprf_key(keys.oprf_seed_hmac, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, request.blinded_element)
    masking_nonce = rng(NN)
    if len(masking_nonce) != NN:
        raise InvalidInput("rng returned the wrong number of bytes")
    pad = hazmat.hkdf_expand(
        rec.masking_key, masking_nonce + b"CredentialResponsePad", NPK + ENVELOPE_BYTES
    )
    # Security: masking hides the envelope and server key so KE2 is the same for unknown accounts.
    masked_response = hazmat.xor(pad, server_public_key + rec.envelope)
    credential_response = evaluated + masking_nonce + masked_response

    # AuthServerRespond
    server_nonce = rng(NN)
    keyshare_seed = rng(NSEED)
    if len(server_nonce) != NN or len(keyshare_seed) != NSEED:
        raise InvalidInput("rng returned the wrong number of bytes")
    server_secret, server_keyshare = hazmat.derive_dh_key_pair(keyshare_seed)
    preamble = hazmat.build_preamble(
        config.context,
        rec.client_public_key if client_identity is None else client_identity,
        request.to_bytes(),
        server_public_key if server_identity is None else server_identity,
        credential_response,
        server_nonce,
        server_keyshare,
    )
    ikm = hazmat.server_ikm(
        server_secret,
        keys.server_private_key,
        request.client_public_keyshare,
        rec.client_public_key,
    )
    ake = hazmat.derive_keys(ikm, preamble)
    server_mac, expected_client_mac = hazmat.server_mac_and_expected_client_mac(ake, preamble)
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
    evaluated, masking_nonce, masked_response, server_nonce, server_keyshare, server_mac = (
        hazmat.split(ke2, (NOE, NN, NPK + ENVELOPE_BYTES, NN, NPK, NM), "KE2")
    )
    ristretto.decode_element(evaluated)
    ristretto.decode_element(server_keyshare)

    # RecoverCredentials
    oprf_output = oprf.finalize(state.password, state.blind, evaluated)
    rwd = hazmat.randomized_password(oprf_output, config.ksf)
    masking_key = hazmat.hkdf_expand(rwd, b"MaskingKey", NH)
    pad = hazmat.hkdf_expand(
        masking_key, masking_nonce + b"CredentialResponsePad", NPK + ENVELOPE_BYTES
    )
    server_public_key, envelope = hazmat.split(
        hazmat.xor(pad, masked_response), (NPK, ENVELOPE_BYTES), "credential response"
    )
    recovered = hazmat.recover(rwd, server_public_key, envelope, server_identity, client_identity)
    try:
        ristretto.decode_element(server_public_key)
    except InvalidInput as exc:  # only reachable with a forged envelope; same answer as a bad MAC
        raise AuthenticationError("server could not be authenticated") from exc

    # AuthClientFinalize
    preamble = hazmat.build_preamble(
        config.context,
        recovered.client_public_key if client_identity is None else client_identity,
        state.ke1,
        server_public_key if server_identity is None else server_identity,
        evaluated + masking_nonce + masked_response,
        server_nonce,
        server_keyshare,
    )
    ikm = hazmat.client_ikm(
        state.client_secret, recovered.client_private_key, server_keyshare, server_public_key
    )
    ake = hazmat.derive_keys(ikm, preamble)
    expected_server_mac, client_mac = hazmat.server_mac_and_expected_client_mac(ake, preamble)
    # Security: the server proves it holds the server key and saw the same transcript.
    if not hmac.compare_digest(expected_server_mac, server_mac):
        raise AuthenticationError("server could not be authenticated")
    return client_mac, ake.session_key, recovered.export_key


def server_login_finish(expected_client_mac: bytes, ke3: bytes) -> None:
    """RFC 9807 ServerFinish: constant-time check of the client MAC (AuthenticationError)."""
    (client_mac,) = hazmat.split(ke3, (KE3_BYTES,), "KE3")
    if len(expected_client_mac) != KE3_BYTES:
        raise InvalidInput("expected client MAC must be 64 bytes")
    # Security: constant-time compare so a forger learns nothing from timing.
    if not hmac.compare_digest(expected_client_mac, client_mac):
        raise AuthenticationError("client authentication failed")
