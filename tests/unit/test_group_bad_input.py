"""Bad group elements, scalars and OPAQUE/OPRF messages: always InvalidInput, nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from det_rng import det_rng
from hypothesis import given
from hypothesis import strategies as st

from vault_protocol import opaque, oprf, ristretto
from vault_protocol.errors import AuthenticationError, InvalidInput
from vault_protocol.opaque import hazmat

pytestmark = pytest.mark.unit

IDENTITY = bytes(32)
GENERATOR = ristretto.base_mult((1).to_bytes(32, "little"))
P = 2**255 - 19


RNG = det_rng(b"bad-input")
CONFIG = opaque.OpaqueConfig(b"test", opaque.IdentityKsf())
KEYS = opaque.SoftwareServerKeys.generate(RNG)
CRED_ID = b"alice"


def _register() -> tuple[bytes, bytes, bytes]:
    state, request = opaque.registration_start(b"pw", RNG)
    response = opaque.server_registration_response(request, CRED_ID, KEYS)
    record, _ = opaque.registration_finish(state, response, CONFIG, RNG)
    return request, response, record


REQUEST, RESPONSE, RECORD = _register()
LOGIN_STATE, KE1 = opaque.login_start(b"pw", RNG)
KE2, SERVER_STATE = opaque.server_login_start(RECORD, CRED_ID, KE1, KEYS, CONFIG, RNG)
KE3, _, _ = opaque.login_finish(LOGIN_STATE, KE2, CONFIG)

# RFC 9496 appendix A.2 (invalid encodings): non-canonical field element, negative field
# element, non-square x^2, negative xy, s = -1.
RFC9496_BAD = [
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
HIGH_BIT = GENERATOR[:31] + bytes([GENERATOR[31] | 0x80])
BAD_ELEMENTS = {
    "identity": IDENTITY,
    "all-ff": b"\xff" * 32,
    "high-bit-set": HIGH_BIT,
    "s-equals-p": P.to_bytes(32, "little"),
    "s-equals-p-plus-2": (P + 2).to_bytes(32, "little"),
    **{f"rfc9496-a2-{i}": bytes.fromhex(h) for i, h in enumerate(RFC9496_BAD)},
}
BAD_ELEMENT_PARAMS = [pytest.param(v, id=k) for k, v in BAD_ELEMENTS.items()]


def test_generator_decodes() -> None:
    assert ristretto.decode_element(GENERATOR) == GENERATOR


@pytest.mark.parametrize("element", BAD_ELEMENT_PARAMS)
def test_decode_element_rejects(element: bytes) -> None:
    with pytest.raises(InvalidInput):
        ristretto.decode_element(element)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_decode_element_rejects_wrong_length(length: int) -> None:
    with pytest.raises(InvalidInput):
        ristretto.decode_element(GENERATOR[:length] if length <= 32 else GENERATOR * 2)


def test_decode_element_rejects_non_bytes() -> None:
    with pytest.raises(InvalidInput):
        ristretto.decode_element(bytearray(GENERATOR))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "scalar",
    [bytes(32), ristretto.ORDER.to_bytes(32, "little"), b"\xff" * 32, b"\x01" * 31],
    ids=["zero", "order", "all-ff", "short"],
)
def test_decode_scalar_rejects(scalar: bytes) -> None:
    with pytest.raises(InvalidInput):
        ristretto.decode_scalar(scalar)


@pytest.mark.parametrize("element", BAD_ELEMENT_PARAMS)
def test_scalar_mult_rejects(element: bytes) -> None:
    with pytest.raises(InvalidInput):
        ristretto.scalar_mult((5).to_bytes(32, "little"), element)


def test_random_scalar_gives_up_on_a_broken_rng() -> None:
    with pytest.raises(InvalidInput):
        ristretto.random_scalar(lambda n: b"\xff" * n)
    with pytest.raises(InvalidInput):
        ristretto.random_scalar(lambda n: bytes(n))
    with pytest.raises(InvalidInput):
        ristretto.random_scalar(lambda n: bytes(n - 1))


def test_random_scalar_accepts_a_canonical_draw() -> None:
    value = (12345).to_bytes(32, "little")
    assert ristretto.random_scalar(lambda n: value) == value


@pytest.mark.parametrize("element", BAD_ELEMENT_PARAMS)
def test_oprf_rejects_bad_elements(element: bytes) -> None:
    sk, _ = oprf.derive_key_pair(b"\x07" * 32, b"info")
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(sk, element)
    with pytest.raises(InvalidInput):
        oprf.finalize(b"x", sk, element)


def test_oprf_rejects_oversized_input_and_bad_seed() -> None:
    with pytest.raises(InvalidInput):
        oprf.blind(b"x" * 65536, RNG)
    with pytest.raises(InvalidInput):
        oprf.derive_key_pair(b"short", b"info")


# --- OPAQUE messages: wrong sizes ---------------------------------------------------------------


def _server_reg(msg: bytes) -> object:
    return opaque.server_registration_response(msg, CRED_ID, KEYS)


def _client_reg(msg: bytes) -> object:
    state, _ = opaque.registration_start(b"pw", RNG)
    return opaque.registration_finish(state, msg, CONFIG, RNG)


def _server_record(msg: bytes) -> object:
    return opaque.server_login_start(msg, CRED_ID, KE1, KEYS, CONFIG, RNG)


def _server_ke1(msg: bytes) -> object:
    return opaque.server_login_start(RECORD, CRED_ID, msg, KEYS, CONFIG, RNG)


def _client_ke2(msg: bytes) -> object:
    return opaque.login_finish(LOGIN_STATE, msg, CONFIG)


def _server_ke3(msg: bytes) -> object:
    return opaque.server_login_finish(SERVER_STATE.expected_client_mac, msg)


MESSAGES: dict[str, tuple[bytes, Callable[[bytes], object], tuple[int, ...]]] = {
    # name: (good message, parser, offsets of group elements inside it)
    "registration_request": (REQUEST, _server_reg, (0,)),
    "registration_response": (RESPONSE, _client_reg, (0, 32)),
    "registration_record": (RECORD, _server_record, (0,)),
    "KE1": (KE1, _server_ke1, (0, 64)),
    "KE2": (KE2, _client_ke2, (0, 224)),
    "KE3": (KE3, _server_ke3, ()),
}
EXPECTED_SIZES = {
    "registration_request": 32,
    "registration_response": 64,
    "registration_record": 192,
    "KE1": 96,
    "KE2": 320,
    "KE3": 64,
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_good_message_size_and_acceptance(name: str) -> None:
    good, parse, _ = MESSAGES[name]
    assert len(good) == EXPECTED_SIZES[name]
    parse(good)  # the unmodified message is accepted (so the failures below are real)


@pytest.mark.parametrize("name", sorted(MESSAGES))
@pytest.mark.parametrize("change", ["empty", "truncated", "one-short", "one-long", "doubled"])
def test_wrong_size_is_invalid_input(name: str, change: str) -> None:
    good, parse, _ = MESSAGES[name]
    bad = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "one-short": good[:-1],
        "one-long": good + b"\x00",
        "doubled": good + good,
    }[change]
    with pytest.raises(InvalidInput):
        parse(bad)


ELEMENT_SLOTS = [
    pytest.param(name, offset, element, id=f"{name}@{offset}-{label}")
    for name, (_, _, offsets) in MESSAGES.items()
    for offset in offsets
    for label, element in BAD_ELEMENTS.items()
]


@pytest.mark.parametrize(("name", "offset", "element"), ELEMENT_SLOTS)
def test_bad_element_in_message_is_invalid_input(name: str, offset: int, element: bytes) -> None:
    good, parse, _ = MESSAGES[name]
    bad = good[:offset] + element + good[offset + 32 :]
    with pytest.raises(InvalidInput):
        parse(bad)


@pytest.mark.parametrize("name", sorted(MESSAGES))
@given(data=st.data())
def test_random_bytes_never_raise_anything_else(name: str, data: st.DataObject) -> None:
    _, parse, _ = MESSAGES[name]
    size = EXPECTED_SIZES[name]
    message = data.draw(st.one_of(st.binary(max_size=400), st.binary(min_size=size, max_size=size)))
    try:
        parse(message)
    except (InvalidInput, AuthenticationError):
        pass  # a random KE2/KE3 of the right size fails authentication: also a typed error


def test_fake_record_rejects_bad_parts() -> None:
    with pytest.raises(InvalidInput):
        hazmat.build_fake_record(IDENTITY, bytes(64))
    with pytest.raises(InvalidInput):
        hazmat.build_fake_record(GENERATOR, bytes(63))


def test_server_keys_validate_every_problem() -> None:
    with pytest.raises(InvalidInput) as caught:
        opaque.SoftwareServerKeys(b"short", bytes(32), IDENTITY)
    message = str(caught.value)
    assert "oprf_seed" in message
    assert "key pair" in message
    with pytest.raises(InvalidInput, match="does not match"):
        opaque.SoftwareServerKeys(bytes(64), KEYS.server_private_key, GENERATOR)


def test_config_rejects_oversized_context() -> None:
    with pytest.raises(InvalidInput):
        opaque.OpaqueConfig(b"x" * 65536, opaque.IdentityKsf())
