"""Properties of the OPAQUE core: round trips agree, wrong passwords and tampering never pass."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from det_rng import det_rng
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_protocol import opaque
from vault_protocol.errors import AuthenticationError, InvalidInput
from vault_protocol.opaque import hazmat

pytestmark = pytest.mark.unit

CONFIG = opaque.OpaqueConfig(b"BKV-test", opaque.IdentityKsf())
# A tiny Argon2id so a property can exercise the real KSF quickly (8 KiB, one pass).
TINY_ARGON = opaque.OpaqueConfig(
    b"BKV-test", opaque.Argon2idKsf(time_cost=1, lanes=1, memory_kib=8)
)

passwords = st.binary(min_size=0, max_size=64)
seeds = st.binary(min_size=16, max_size=16)
identifiers = st.binary(min_size=1, max_size=32)


KEYS = opaque.SoftwareServerKeys.generate(det_rng(b"server keys"))


def register(
    password: bytes, cred_id: bytes, rng: Callable[[int], bytes], config: opaque.OpaqueConfig
) -> tuple[bytes, bytes]:
    state, request = opaque.registration_start(password, rng)
    response = opaque.server_registration_response(request, cred_id, KEYS)
    return opaque.registration_finish(state, response, config, rng)


def login_to_ke2(
    password: bytes,
    record: bytes,
    cred_id: bytes,
    rng: Callable[[int], bytes],
    config: opaque.OpaqueConfig,
) -> tuple[opaque.ClientLoginState, bytes, opaque.ServerLoginState]:
    state, ke1 = opaque.login_start(password, rng)
    ke2, server_state = opaque.server_login_start(record, cred_id, ke1, KEYS, config, rng)
    return state, ke2, server_state


@given(password=passwords, cred_id=identifiers, seed=seeds)
def test_round_trip_agrees(password: bytes, cred_id: bytes, seed: bytes) -> None:
    rng = det_rng(seed)
    record, export_key = register(password, cred_id, rng, CONFIG)
    assert len(record) == opaque.RECORD_BYTES
    state, ke2, server_state = login_to_ke2(password, record, cred_id, rng, CONFIG)
    ke3, session_key, login_export_key = opaque.login_finish(state, ke2, CONFIG)
    opaque.server_login_finish(server_state.expected_client_mac, ke3)
    assert session_key == server_state.session_key
    assert login_export_key == export_key
    assert len(session_key) == len(export_key) == 64


@given(
    password=passwords,
    cred_id=identifiers,
    seed=seeds,
    client_identity=st.binary(min_size=1, max_size=16),
    server_identity=st.binary(min_size=1, max_size=16),
)
@settings(max_examples=15)
def test_round_trip_with_identities(
    password: bytes, cred_id: bytes, seed: bytes, client_identity: bytes, server_identity: bytes
) -> None:
    rng = det_rng(seed)
    state, request = opaque.registration_start(password, rng)
    response = opaque.server_registration_response(request, cred_id, KEYS)
    record, export_key = opaque.registration_finish(
        state, response, CONFIG, rng, server_identity, client_identity
    )
    login_state, ke1 = opaque.login_start(password, rng)
    ke2, server_state = opaque.server_login_start(
        record, cred_id, ke1, KEYS, CONFIG, rng, server_identity, client_identity
    )
    ke3, session_key, login_export_key = opaque.login_finish(
        login_state, ke2, CONFIG, server_identity, client_identity
    )
    opaque.server_login_finish(server_state.expected_client_mac, ke3)
    assert (session_key, login_export_key) == (server_state.session_key, export_key)
    # The identities are bound: a client expecting another server identity fails.
    with pytest.raises(AuthenticationError):
        opaque.login_finish(login_state, ke2, CONFIG, server_identity + b"x", client_identity)


@given(password=passwords, wrong=passwords, cred_id=identifiers, seed=seeds)
def test_wrong_password_never_authenticates(
    password: bytes, wrong: bytes, cred_id: bytes, seed: bytes
) -> None:
    if wrong == password:
        wrong = password + b"!"
    rng = det_rng(seed)
    record, _ = register(password, cred_id, rng, CONFIG)
    state, ke2, _ = login_to_ke2(wrong, record, cred_id, rng, CONFIG)
    with pytest.raises(AuthenticationError):
        opaque.login_finish(state, ke2, CONFIG)


@given(password=passwords, seed=seeds)
@settings(max_examples=10)
def test_other_credential_identifier_never_authenticates(password: bytes, seed: bytes) -> None:
    rng = det_rng(seed)
    record, _ = register(password, b"alice", rng, CONFIG)
    state, ke2, _ = login_to_ke2(password, record, b"bob", rng, CONFIG)
    with pytest.raises(AuthenticationError):
        opaque.login_finish(state, ke2, CONFIG)


@given(
    password=passwords,
    seed=seeds,
    position=st.integers(0, opaque.KE2_BYTES - 1),
    delta=st.integers(1, 255),
)
def test_any_byte_change_to_ke2_fails_the_client(
    password: bytes, seed: bytes, position: int, delta: int
) -> None:
    rng = det_rng(seed)
    record, _ = register(password, b"alice", rng, CONFIG)
    state, ke2, _ = login_to_ke2(password, record, b"alice", rng, CONFIG)
    tampered = bytearray(ke2)
    tampered[position] ^= delta
    # A changed element may no longer decode (InvalidInput); anything else fails authentication.
    with pytest.raises((AuthenticationError, InvalidInput)):
        opaque.login_finish(state, bytes(tampered), CONFIG)


@given(
    password=passwords,
    seed=seeds,
    position=st.integers(0, opaque.KE3_BYTES - 1),
    delta=st.integers(1, 255),
)
def test_any_byte_change_to_ke3_fails_the_server(
    password: bytes, seed: bytes, position: int, delta: int
) -> None:
    rng = det_rng(seed)
    record, _ = register(password, b"alice", rng, CONFIG)
    state, ke2, server_state = login_to_ke2(password, record, b"alice", rng, CONFIG)
    ke3, _, _ = opaque.login_finish(state, ke2, CONFIG)
    tampered = bytearray(ke3)
    tampered[position] ^= delta
    with pytest.raises(AuthenticationError):
        opaque.server_login_finish(server_state.expected_client_mac, bytes(tampered))


@given(password=passwords, wrong=passwords, seed=seeds)
@settings(max_examples=5)
def test_argon2id_round_trip_and_wrong_password(password: bytes, wrong: bytes, seed: bytes) -> None:
    if wrong == password:
        wrong = password + b"!"
    rng = det_rng(seed)
    record, export_key = register(password, b"alice", rng, TINY_ARGON)
    state, ke2, server_state = login_to_ke2(password, record, b"alice", rng, TINY_ARGON)
    ke3, session_key, login_export_key = opaque.login_finish(state, ke2, TINY_ARGON)
    opaque.server_login_finish(server_state.expected_client_mac, ke3)
    assert (session_key, login_export_key) == (server_state.session_key, export_key)
    bad_state, bad_ke2, _ = login_to_ke2(wrong, record, b"alice", rng, TINY_ARGON)
    with pytest.raises(AuthenticationError):
        opaque.login_finish(bad_state, bad_ke2, TINY_ARGON)


def test_ksf_is_part_of_the_password() -> None:
    # A record made with Argon2id does not open with the identity KSF: the KSF is really applied.
    rng = det_rng(b"ksf")
    record, _ = register(b"pw", b"alice", rng, TINY_ARGON)
    state, ke2, _ = login_to_ke2(b"pw", record, b"alice", rng, CONFIG)
    with pytest.raises(AuthenticationError):
        opaque.login_finish(state, ke2, CONFIG)


def test_argon2id_parameters() -> None:
    default = opaque.Argon2idKsf()
    assert (default.time_cost, default.lanes, default.memory_kib) == (3, 4, 65536)
    tiny = opaque.Argon2idKsf(time_cost=1, lanes=1, memory_kib=8)
    out = tiny.stretch(b"x")
    assert len(out) == 64 and out != b"x" and out == tiny.stretch(b"x")
    with pytest.raises(InvalidInput) as caught:
        opaque.Argon2idKsf(time_cost=0, lanes=0, memory_kib=0)
    assert all(word in str(caught.value) for word in ("time_cost", "lanes", "memory_kib"))


def test_fake_record_login_fails_like_a_wrong_password() -> None:
    rng = det_rng(b"fake")
    record = opaque.fake_record(rng)
    assert len(record) == opaque.RECORD_BYTES
    state, ke2, _ = login_to_ke2(b"pw", record, b"nobody", rng, CONFIG)
    assert len(ke2) == opaque.KE2_BYTES
    with pytest.raises(AuthenticationError):
        opaque.login_finish(state, ke2, CONFIG)


def test_derive_ake_key_pair_is_deterministic_and_valid() -> None:
    import hmac

    def ake_seed_hmac(data: bytes) -> bytes:
        return hmac.new(b"\x11" * 32, data, hashlib.sha512).digest()

    sk, pk = opaque.derive_ake_key_pair(ake_seed_hmac)
    assert (sk, pk) == opaque.derive_ake_key_pair(ake_seed_hmac)
    expected = hazmat.derive_dh_key_pair(ake_seed_hmac(b"bkv-v1 ake-seed")[:32])
    assert (sk, pk) == expected
    opaque.SoftwareServerKeys(b"\x22" * 64, sk, pk)  # a consistent pair validates


def test_reprs_hide_secrets() -> None:
    rng = det_rng(b"repr")
    password = b"correct horse battery staple"
    reg_state, _ = opaque.registration_start(password, rng)
    login_state, _ = opaque.login_start(password, rng)
    record, _ = register(password, b"alice", rng, CONFIG)
    _, _, server_state = login_to_ke2(password, record, b"alice", rng, CONFIG)
    texts = [repr(reg_state), repr(login_state), repr(server_state), repr(KEYS)]
    secrets = [
        password,
        reg_state.blind,
        login_state.client_secret,
        server_state.session_key,
        server_state.expected_client_mac,
        KEYS.oprf_seed,
        KEYS.server_private_key,
    ]
    for text in texts:
        for secret in secrets:
            assert secret.hex() not in text
            assert repr(secret) not in text
            assert str(list(secret)) not in text
