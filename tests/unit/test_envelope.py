"""The sealed envelope: fleet key, info binding, padding, request and response sealing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from bkv.v1 import envelope_pb2
from vault_protocol import envelope, hpke
from vault_protocol.envelope import FleetKey
from vault_protocol.errors import DecryptError, InvalidInput

pytestmark = pytest.mark.unit

ACCOUNT = "alice@example"
FAST = settings(max_examples=60, deadline=None)


class Fleet:
    """A software stand-in for the fleet's token: the private key and its ECDH."""

    def __init__(self) -> None:
        self.sk = ec.generate_private_key(ec.SECP256R1())
        self.key = FleetKey(
            self.sk.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )

    def ecdh(self, enc_point: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc_point)
        return self.sk.exchange(ec.ECDH(), peer)

    def open(self, data: bytes, account_id: str = ACCOUNT) -> envelope_pb2.VaultRequest:
        return envelope.open_request(
            data, account_id, self.key.fleet_id, self.ecdh, self.key.public_key_bytes
        )


FLEET = Fleet()


def _request(**op: object) -> envelope_pb2.VaultRequest:
    request = envelope_pb2.VaultRequest(response_key=os.urandom(32), **op)
    return request


def _register_start() -> envelope_pb2.VaultRequest:
    return _request(register_start=envelope_pb2.RegisterStart(registration_request=os.urandom(32)))


def _recover_start() -> envelope_pb2.VaultRequest:
    return _request(recover_start=envelope_pb2.RecoverStart(ke1=os.urandom(96)))


def _hand_sealed(padded: bytes, **fields: object) -> bytes:
    """An envelope built around an arbitrary padded plaintext (bypassing seal_request checks)."""
    info = envelope.envelope_info(FLEET.key.fleet_id, ACCOUNT)
    enc, ct = hpke.seal_base(FLEET.key.public_key_bytes, info, b"", padded, os.urandom)
    message = envelope_pb2.SealedEnvelope(
        version=envelope.PROTOCOL_VERSION, fleet_id=FLEET.key.fleet_id, enc=enc, ciphertext=ct
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return bytes(message.SerializeToString())


# --- FleetKey and info ----------------------------------------------------------------------


def test_fleet_key_from_point_and_pem_agree() -> None:
    point = FLEET.key.public_key_bytes
    assert len(point) == 65 and point[0] == 4
    assert FLEET.key.fleet_id == hashlib.sha256(point).digest()[:16]
    pem = FLEET.sk.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    from_pem = FleetKey.from_pem(pem)
    assert from_pem == FLEET.key
    assert from_pem.fleet_id == FLEET.key.fleet_id
    assert FleetKey.from_pem(FLEET.key.to_pem()) == FLEET.key
    assert FLEET.key.fleet_id.hex() in repr(FLEET.key)


def test_fleet_key_rejects_bad_keys() -> None:
    point = FLEET.key.public_key_bytes
    for bad in (b"", point[:-1], point[:-1] + bytes([point[-1] ^ 1]), b"\x02" + point[1:33]):
        with pytest.raises(InvalidInput):
            FleetKey(bad)
    with pytest.raises(InvalidInput):
        FleetKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    for key in (other_curve, ed):
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(InvalidInput):
            FleetKey.from_pem(pem)


def test_envelope_info_layout_is_length_prefixed() -> None:
    fleet_id = bytes(range(16))
    info = envelope.envelope_info(fleet_id, "bob")
    version = b"\x00\x02" + envelope.PROTOCOL_VERSION.to_bytes(2, "big")
    assert info == b"\x00\x06bkv-v1" + version + b"\x00\x10" + fleet_id + b"\x00\x03bob"
    assert envelope.envelope_info(fleet_id, "bo") != envelope.envelope_info(fleet_id, "bob")
    with pytest.raises(InvalidInput):
        envelope.envelope_info(fleet_id[:15], "bob")
    with pytest.raises(InvalidInput):
        envelope.envelope_info(fleet_id, "x" * 70000)


# --- padding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "bucket"),
    [(0, 512), (508, 512), (509, 1024), (1020, 1024), (2044, 2048), (4092, 4096), (16380, 16384)],
)
def test_pad_picks_the_smallest_bucket(size: int, bucket: int) -> None:
    data = os.urandom(size)
    padded = envelope.pad(data)
    assert len(padded) == bucket
    assert padded[:4] == size.to_bytes(4, "big")
    assert envelope.unpad(padded) == data


def test_pad_rejects_oversized() -> None:
    with pytest.raises(InvalidInput):
        envelope.pad(bytes(16381))


def test_unpad_rejects_bad_padding() -> None:
    padded = bytearray(envelope.pad(b"hello"))
    with pytest.raises(InvalidInput):
        envelope.unpad(bytes(padded[:-1]))  # not a bucket size
    nonzero = bytearray(padded)
    nonzero[-1] = 1
    with pytest.raises(InvalidInput):
        envelope.unpad(bytes(nonzero))
    too_long = bytearray(padded)
    too_long[:4] = (509).to_bytes(4, "big")
    with pytest.raises(InvalidInput):
        envelope.unpad(bytes(too_long))
    assert envelope.unpad((508).to_bytes(4, "big") + bytes(508)) == bytes(508)


@FAST
@given(st.binary(max_size=5000))
def test_pad_round_trips(data: bytes) -> None:
    padded = envelope.pad(data)
    assert len(padded) in envelope.BUCKETS
    assert envelope.unpad(padded) == data


# --- requests -------------------------------------------------------------------------------


def test_request_round_trip() -> None:
    request = _register_start()
    sealed = envelope.seal_request(FLEET.key, ACCOUNT, request)
    assert FLEET.open(sealed) == request


@FAST
@given(account=st.text(min_size=1, max_size=64), record=st.binary(max_size=3000))
def test_request_round_trip_property(account: str, record: bytes) -> None:
    # Step 1 carries first steps only (a RegisterFinish travels continued: test_continuation).
    request = _request(register_start=envelope_pb2.RegisterStart(registration_request=record))
    sealed = envelope.seal_request(FLEET.key, account, request)
    assert FLEET.open(sealed, account) == request


def test_every_operation_round_trips_in_one_envelope_size() -> None:
    # Padding: register-start and recover-start (and the begins of delete and status) look alike.
    requests = [
        _register_start(),
        _recover_start(),
        _request(begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_DELETE)),
        _request(begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS)),
    ]
    sizes = set()
    for request in requests:
        sealed = envelope.seal_request(FLEET.key, ACCOUNT, request)
        sizes.add(len(sealed))
        opened = FLEET.open(sealed)
        assert opened == request
        assert opened.WhichOneof("op") == request.WhichOneof("op")
    assert len(sizes) == 1


def test_second_steps_never_travel_in_a_sealed_envelope() -> None:
    for op in (
        {"delete": envelope_pb2.DeleteRequest()},
        {"status": envelope_pb2.StatusRequest()},
        {"recover_finish": envelope_pb2.RecoverFinish(ke3=os.urandom(64))},
    ):
        with pytest.raises(InvalidInput, match="first step"):
            envelope.seal_request(FLEET.key, ACCOUNT, _request(**op))
        padded = envelope.pad(_request(**op).SerializeToString())
        with pytest.raises(InvalidInput, match="first step"):
            FLEET.open(_hand_sealed(padded))


def test_account_swap_fails_to_open() -> None:
    sealed = envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())
    with pytest.raises(DecryptError):
        FLEET.open(sealed, "mallory@example")


def test_other_fleet_key_fails_to_open() -> None:
    other = Fleet()
    sealed = envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())
    with pytest.raises(DecryptError):
        envelope.open_request(
            sealed, ACCOUNT, FLEET.key.fleet_id, other.ecdh, FLEET.key.public_key_bytes
        )


def test_wrong_fleet_id_is_invalid_input() -> None:
    other = Fleet()
    sealed = envelope.seal_request(other.key, ACCOUNT, _recover_start())
    with pytest.raises(InvalidInput, match="fleet"):
        FLEET.open(sealed)


def test_wrong_version_is_invalid_input() -> None:
    sealed = envelope_pb2.SealedEnvelope.FromString(
        envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())
    )
    for other in (envelope.PROTOCOL_VERSION - 1, envelope.PROTOCOL_VERSION + 1):
        sealed.version = other
        with pytest.raises(InvalidInput, match="version"):
            FLEET.open(sealed.SerializeToString())


def test_a_version_2_envelope_is_refused_by_name() -> None:
    assert envelope.PROTOCOL_VERSION == 3
    sealed = envelope_pb2.SealedEnvelope.FromString(
        envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())
    )
    sealed.version = 2
    with pytest.raises(envelope.UnsupportedVersion) as caught:
        FLEET.open(sealed.SerializeToString())
    assert str(caught.value) == (
        "unsupported protocol version: this vault speaks protocol 3; envelope is version 2 - "
        "upgrade the client"
    )
    assert caught.value.got == 2


def test_truncated_and_oversized_envelopes_are_invalid_input() -> None:
    sealed = envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())
    for cut in (0, 1, 10, 40, len(sealed) // 2, len(sealed) - 1):
        with pytest.raises(InvalidInput):
            FLEET.open(sealed[:cut])
    with pytest.raises(InvalidInput):
        FLEET.open(sealed + bytes(envelope.MAX_ENVELOPE_BYTES))
    with pytest.raises(InvalidInput):
        FLEET.open(bytes(envelope.MAX_ENVELOPE_BYTES + 1))


def test_non_canonical_encoding_is_invalid_input() -> None:
    sealed = envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())
    # An unknown field appended (tag 15, varint 1): valid protobuf, but not the canonical bytes.
    with pytest.raises(InvalidInput, match="canonical"):
        FLEET.open(sealed + b"\x78\x01")


def test_bad_enc_is_invalid_input() -> None:
    padded = envelope.pad(_recover_start().SerializeToString())
    good = envelope_pb2.SealedEnvelope.FromString(_hand_sealed(padded))
    for enc in (b"", good.enc[:-1], good.enc[:-1] + bytes([good.enc[-1] ^ 1])):
        good.enc = enc
        with pytest.raises(InvalidInput):
            FLEET.open(good.SerializeToString())


def test_non_bucket_ciphertext_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="size"):
        FLEET.open(_hand_sealed(b"not padded"))


def test_authentic_but_malformed_plaintexts_are_invalid_input() -> None:
    no_op = envelope_pb2.VaultRequest(response_key=os.urandom(32)).SerializeToString()
    short_key = _recover_start()
    short_key.response_key = os.urandom(16)
    nonzero_padding = bytearray(envelope.pad(b""))
    nonzero_padding[-1] = 7
    for padded in (
        envelope.pad(no_op),
        envelope.pad(short_key.SerializeToString()),
        envelope.pad(b"\xff\xff\xff"),  # not a protobuf message
        bytes(nonzero_padding),
    ):
        with pytest.raises(InvalidInput):
            FLEET.open(_hand_sealed(padded))


def test_seal_request_checks_the_request() -> None:
    with pytest.raises(InvalidInput, match="response_key"):
        envelope.seal_request(
            FLEET.key, ACCOUNT, envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest())
        )
    with pytest.raises(InvalidInput, match="operation"):
        envelope.seal_request(FLEET.key, ACCOUNT, envelope_pb2.VaultRequest(response_key=bytes(32)))
    with pytest.raises(InvalidInput):
        envelope.seal_request(
            FLEET.key,
            ACCOUNT,
            _request(register_finish=envelope_pb2.RegisterFinish(registration_record=bytes(17000))),
        )


SEALED_REQUEST = envelope.seal_request(FLEET.key, ACCOUNT, _recover_start())


@FAST
@given(position=st.integers(0, len(SEALED_REQUEST) - 1), delta=st.integers(1, 255))
def test_any_single_byte_change_to_an_envelope_is_rejected(position: int, delta: int) -> None:
    tampered = bytearray(SEALED_REQUEST)
    tampered[position] ^= delta
    with pytest.raises((InvalidInput, DecryptError)):
        FLEET.open(bytes(tampered))


def test_every_byte_of_an_envelope_is_protected() -> None:
    for position in range(len(SEALED_REQUEST)):
        tampered = bytearray(SEALED_REQUEST)
        tampered[position] ^= 0x01
        with pytest.raises((InvalidInput, DecryptError)):
            FLEET.open(bytes(tampered))


@FAST
@given(st.binary(max_size=700))
def test_random_bytes_never_open(data: bytes) -> None:
    with pytest.raises((InvalidInput, DecryptError)):
        FLEET.open(data)


# --- responses ------------------------------------------------------------------------------


def _response() -> envelope_pb2.VaultResponse:
    return envelope_pb2.VaultResponse(
        outcome=envelope_pb2.OUTCOME_OK,
        guesses_left=7,
        recover_start=envelope_pb2.RecoverStartReply(ke2=os.urandom(320)),
        ticket=os.urandom(200),
    )


def _counting_rng() -> Callable[[int], bytes]:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return os.urandom(n)

    rng.calls = calls  # type: ignore[attr-defined]
    return rng


def test_response_round_trip_uses_a_fresh_nonce() -> None:
    key = os.urandom(32)
    response = _response()
    rng = _counting_rng()
    first = envelope.seal_response(key, response, rng)
    second = envelope.seal_response(key, response, rng)
    assert rng.calls == [12, 12]  # type: ignore[attr-defined]
    assert first != second
    assert envelope.open_response(key, first) == response
    assert envelope.open_response(key, second) == response
    assert len(envelope_pb2.SealedResponse.FromString(first).ciphertext) - 16 in envelope.BUCKETS


def test_response_under_another_key_fails() -> None:
    sealed = envelope.seal_response(os.urandom(32), _response(), os.urandom)
    with pytest.raises(DecryptError):
        envelope.open_response(os.urandom(32), sealed)


def test_response_key_and_input_checks() -> None:
    with pytest.raises(InvalidInput):
        envelope.seal_response(os.urandom(16), _response(), os.urandom)
    with pytest.raises(InvalidInput):
        envelope.open_response(os.urandom(31), b"")
    key = os.urandom(32)
    with pytest.raises(InvalidInput):
        envelope.open_response(key, bytes(envelope.MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(InvalidInput):
        envelope.open_response(key, b"\xff\xff")
    with pytest.raises(InvalidInput):
        envelope.open_response(
            key,
            envelope_pb2.SealedResponse(nonce=bytes(11), ciphertext=bytes(40)).SerializeToString(),
        )


RESPONSE_KEY = os.urandom(32)
SEALED_RESPONSE = envelope.seal_response(RESPONSE_KEY, _response(), os.urandom)


@FAST
@given(position=st.integers(0, len(SEALED_RESPONSE) - 1), delta=st.integers(1, 255))
def test_any_single_byte_change_to_a_response_is_rejected(position: int, delta: int) -> None:
    tampered = bytearray(SEALED_RESPONSE)
    tampered[position] ^= delta
    with pytest.raises((InvalidInput, DecryptError)):
        envelope.open_response(RESPONSE_KEY, bytes(tampered))
