"""vault_protocol.continuation: protocol 3's second step, under a key of the first."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bkv.v1 import envelope_pb2
from vault_protocol import continuation as c
from vault_protocol import envelope
from vault_protocol.errors import DecryptError, InvalidInput

pytestmark = pytest.mark.unit

FAST = settings(max_examples=60, deadline=None)
FLEET_ID = bytes(range(16))
ACCOUNT = "alice@example"
TICKET = os.urandom(418)
KEYS = c.StepKeys.derive(os.urandom(32))


def _seal(
    request: envelope_pb2.VaultRequest,
    account: str = ACCOUNT,
    ticket: bytes = TICKET,
    key: bytes = KEYS.request2,
) -> bytes:
    return c.seal_continued(FLEET_ID, account, ticket, key, request, os.urandom)


def _open(blob: bytes, account: str = ACCOUNT, key: bytes = KEYS.request2) -> object:
    return c.open_continued(c.parse_continued(blob, FLEET_ID), account, FLEET_ID, key)


def _finish() -> envelope_pb2.VaultRequest:
    return envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=os.urandom(64)))


def test_one_key_per_purpose_and_deterministic() -> None:
    key = os.urandom(32)
    a, b = c.StepKeys.derive(key), c.StepKeys.derive(key)
    assert a == b
    assert len({a.answer1, a.request2, a.answer2, key}) == 4
    assert c.StepKeys.derive(os.urandom(32)).request2 != a.request2
    assert "request2=" not in repr(a) or a.request2.hex() not in repr(a)
    with pytest.raises(InvalidInput):
        c.StepKeys.derive(bytes(31))


def test_every_second_step_round_trips_in_one_size() -> None:
    requests = [
        _finish(),
        envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest()),
        envelope_pb2.VaultRequest(delete=envelope_pb2.DeleteRequest()),
        envelope_pb2.VaultRequest(
            register_finish=envelope_pb2.RegisterFinish(
                registration_record=os.urandom(192),
                wrapped_key=os.urandom(60),
                max_attempts=100,
                ksf=envelope_pb2.KsfParams(
                    argon2id_time_cost=3, argon2id_lanes=4, argon2id_memory_kib=65536
                ),
            )
        ),
    ]
    sizes = set()
    for request in requests:
        blob = _seal(request)
        sizes.add(len(blob))
        assert _open(blob) == request
    assert len(sizes) == 1


@FAST
@given(account=st.text(min_size=1, max_size=64), record=st.binary(max_size=3000))
def test_register_finish_round_trip_property(account: str, record: bytes) -> None:
    request = envelope_pb2.VaultRequest(
        register_finish=envelope_pb2.RegisterFinish(
            registration_record=record, wrapped_key=os.urandom(60)
        )
    )
    assert _open(_seal(request, account), account) == request


def test_swapped_account_ticket_or_key_fails_to_open() -> None:
    blob = _seal(_finish())
    with pytest.raises(DecryptError):
        _open(blob, "mallory@example")
    with pytest.raises(DecryptError):
        _open(blob, key=c.StepKeys.derive(os.urandom(32)).request2)
    swapped = envelope_pb2.ContinuedEnvelope.FromString(blob)
    swapped.ticket = os.urandom(len(TICKET))  # another ticket, same size
    with pytest.raises(DecryptError):
        _open(swapped.SerializeToString(deterministic=True))


def test_every_byte_is_protected() -> None:
    blob = _seal(_finish())
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises((InvalidInput, DecryptError)):
            _open(bytes(tampered))


def test_other_versions_fleets_and_shapes_are_invalid_input() -> None:
    good = envelope_pb2.ContinuedEnvelope.FromString(_seal(_finish()))
    for version in (2, 4):
        old = envelope_pb2.ContinuedEnvelope()
        old.CopyFrom(good)
        old.version = version
        with pytest.raises(envelope.UnsupportedVersion, match=f"envelope is version {version}"):
            _open(old.SerializeToString(deterministic=True))
    with pytest.raises(InvalidInput, match="fleet"):
        c.parse_continued(good.SerializeToString(deterministic=True), bytes(16))
    with pytest.raises(InvalidInput, match="canonical"):
        _open(good.SerializeToString(deterministic=True) + b"\x78\x01")
    with pytest.raises(InvalidInput):
        _open(bytes(envelope.MAX_ENVELOPE_BYTES + 1))


def test_a_first_step_is_never_sealed_continued() -> None:
    with pytest.raises(InvalidInput, match="response_key"):
        _seal(envelope_pb2.VaultRequest(response_key=os.urandom(32), status={}))
    with pytest.raises(InvalidInput, match="operation"):
        _seal(envelope_pb2.VaultRequest())
    with pytest.raises(InvalidInput, match="ticket"):
        _seal(_finish(), ticket=b"")


def test_kinds_are_told_apart() -> None:
    assert envelope.is_continued(_seal(_finish()))
    fleet_key = envelope.FleetKey(
        bytes.fromhex(
            "04"
            "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
            "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
        )
    )
    request = envelope_pb2.VaultRequest(
        response_key=os.urandom(32), begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS)
    )
    assert not envelope.is_continued(envelope.seal_request(fleet_key, ACCOUNT, request))


def test_step_keys_are_rfc_5869_hkdf() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = os.urandom(32)
    keys = c.StepKeys.derive(key)
    for label, derived in (
        (b"bkv-v3 step-1 answer", keys.answer1),
        (b"bkv-v3 step-2 request", keys.request2),
        (b"bkv-v3 step-2 answer", keys.answer2),
    ):
        hkdf = HKDF(hashes.SHA256(), 32, salt=b"bkv-v3 step keys", info=label)
        assert hkdf.derive(key) == derived
