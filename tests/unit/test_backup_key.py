"""The backup key: display and parsing, secrecy, wrapping and transport."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_protocol import backup_key
from vault_protocol.backup_key import BackupKey
from vault_protocol.errors import DecryptError, InvalidInput, KeyFormatError

pytestmark = pytest.mark.unit

FAST = settings(max_examples=100, deadline=None)
KEY_BYTES = bytes.fromhex("00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0")
KEY = BackupKey(KEY_BYTES)


def test_display_is_16_groups_of_4_lowercase_hex() -> None:
    text = KEY.display()
    assert text == (
        "0011 2233 4455 6677 8899 aabb ccdd eeff 0f1e 2d3c 4b5a 6978 8796 a5b4 c3d2 e1f0"
    )
    assert re.fullmatch(r"[0-9a-f]{4}( [0-9a-f]{4}){15}", text)


@FAST
@given(st.binary(min_size=32, max_size=32))
def test_parse_reads_its_own_display(raw: bytes) -> None:
    key = BackupKey(raw)
    assert BackupKey.parse(key.display()) == key
    assert bytes(BackupKey.parse(key.display())) == raw


@FAST
@given(
    raw=st.binary(min_size=32, max_size=32),
    separators=st.lists(
        st.sampled_from([" ", "-", "\n", "\r\n", "\t", "  "]), min_size=64, max_size=64
    ),
    upper=st.lists(st.booleans(), min_size=64, max_size=64),
)
def test_parse_tolerates_separators_and_case(
    raw: bytes, separators: list[str], upper: list[bool]
) -> None:
    digits = [c.upper() if up else c for c, up in zip(raw.hex(), upper, strict=True)]
    text = "".join(d + s for d, s in zip(digits, separators, strict=True))
    assert bytes(BackupKey.parse(text)) == raw


def test_parse_examples() -> None:
    dashed = KEY.display().upper().replace(" ", "-")
    assert BackupKey.parse(dashed) == KEY
    assert BackupKey.parse("\n" + KEY_BYTES.hex() + "\n") == KEY
    four_lines = "\n".join(KEY.display()[i : i + 20] for i in range(0, 80, 20))
    assert BackupKey.parse(four_lines) == KEY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 64 hex digits, got 0"),
        (KEY_BYTES.hex()[:-1], "expected 64 hex digits, got 63"),
        (KEY_BYTES.hex() + "0", "expected 64 hex digits, got 65"),
        ("g" + KEY_BYTES.hex()[1:], "invalid character at position 1"),
        (KEY.display()[:5] + "x" + KEY.display()[6:], "invalid character at position 6"),
        (
            KEY_BYTES.hex()[:10] + "\u0663" + KEY_BYTES.hex()[11:],
            "invalid character at position 11",
        ),
        (KEY_BYTES.hex()[:31] + "_" + KEY_BYTES.hex()[31:], "invalid character at position 32"),
    ],
)
def test_parse_errors_say_why_without_echoing(text: str, message: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        BackupKey.parse(text)
    assert str(info.value) == message
    assert isinstance(info.value, InvalidInput)


def test_parse_error_never_contains_the_digits() -> None:
    secret = os.urandom(32).hex()
    with pytest.raises(KeyFormatError) as info:
        BackupKey.parse(secret + "z")
    assert secret[:8] not in str(info.value)
    assert secret[:8] not in repr(info.value)


def test_repr_and_str_hide_the_key() -> None:
    for shown in (repr(KEY), str(KEY), f"{KEY}", f"{KEY!r}"):
        assert KEY_BYTES.hex() not in shown
        assert KEY_BYTES.hex()[:8] not in shown
        assert "0011" not in shown


def test_equality_and_construction() -> None:
    assert BackupKey(KEY_BYTES) == KEY
    assert BackupKey(bytes(32)) != KEY
    assert KEY != KEY_BYTES
    with pytest.raises(TypeError):
        hash(KEY)
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(InvalidInput):
            BackupKey(bad)


def test_generate_uses_the_rng() -> None:
    assert bytes(BackupKey.generate(lambda n: b"\x07" * n)) == b"\x07" * 32
    assert BackupKey.generate(os.urandom) != BackupKey.generate(os.urandom)


# --- wrapping -------------------------------------------------------------------------------


EXPORT_KEY = os.urandom(64)


def test_wrap_round_trip() -> None:
    wrapped = backup_key.wrap_key(KEY, EXPORT_KEY, "alice", os.urandom)
    assert len(wrapped) == backup_key.WRAPPED_KEY_LEN == 60
    assert KEY_BYTES not in wrapped
    assert backup_key.unwrap_key(wrapped, EXPORT_KEY, "alice") == KEY


def test_wrap_is_bound_to_export_key_and_account() -> None:
    wrapped = backup_key.wrap_key(KEY, EXPORT_KEY, "alice", os.urandom)
    with pytest.raises(DecryptError):
        backup_key.unwrap_key(wrapped, os.urandom(64), "alice")
    with pytest.raises(DecryptError):
        backup_key.unwrap_key(wrapped, EXPORT_KEY, "bob")
    for bad in (b"", wrapped[:-1], wrapped + b"\x00"):
        with pytest.raises(DecryptError):
            backup_key.unwrap_key(bad, EXPORT_KEY, "alice")
    with pytest.raises(InvalidInput):
        backup_key.wrap_key(KEY, b"short", "alice", os.urandom)


def test_wrap_nonce_comes_from_rng() -> None:
    first = backup_key.wrap_key(KEY, EXPORT_KEY, "alice", lambda n: bytes(n))
    second = backup_key.wrap_key(KEY, EXPORT_KEY, "alice", lambda n: bytes(n))
    assert first == second and first[:12] == bytes(12)
    assert backup_key.wrap_key(KEY, EXPORT_KEY, "alice", os.urandom) != first


WRAPPED = backup_key.wrap_key(KEY, EXPORT_KEY, "alice", os.urandom)


@FAST
@given(position=st.integers(0, len(WRAPPED) - 1), delta=st.integers(1, 255))
def test_any_change_to_a_wrapped_key_fails(position: int, delta: int) -> None:
    tampered = bytearray(WRAPPED)
    tampered[position] ^= delta
    with pytest.raises(DecryptError):
        backup_key.unwrap_key(bytes(tampered), EXPORT_KEY, "alice")


# --- transport ------------------------------------------------------------------------------


def test_transport_round_trip_and_failures() -> None:
    session_key = os.urandom(64)
    assert len(backup_key.transport_key(session_key)) == 32
    assert backup_key.transport_key(session_key) != backup_key.transport_key(os.urandom(64))
    sealed = backup_key.seal_transport(session_key, WRAPPED, os.urandom)
    assert WRAPPED not in sealed
    assert backup_key.open_transport(session_key, sealed) == WRAPPED
    with pytest.raises(DecryptError):
        backup_key.open_transport(os.urandom(64), sealed)
    for bad in (b"", sealed[:27], sealed[:-1], sealed[:-1] + bytes([sealed[-1] ^ 1])):
        with pytest.raises(DecryptError):
            backup_key.open_transport(session_key, bad)
    with pytest.raises(InvalidInput):
        backup_key.transport_key(b"short")
