"""The streaming backup-file format: round trips, layout, and rejection of every kind of edit."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_protocol import backup_file
from vault_protocol.backup_key import BackupKey
from vault_protocol.errors import DecryptError, InvalidInput

pytestmark = pytest.mark.unit

FAST = settings(max_examples=60, deadline=None)
KEY = BackupKey(bytes(range(32)))
CHUNK = 16
SEALED_CHUNK = CHUNK + 16
CORRUPT = "backup file is corrupt, truncated or encrypted with another key"


def encrypt(data: bytes, chunk_size: int = CHUNK, key: BackupKey = KEY) -> bytes:
    out = io.BytesIO()
    assert backup_file.encrypt_stream(io.BytesIO(data), out, key, os.urandom, chunk_size) == len(
        data
    )
    return out.getvalue()


def decrypt(blob: bytes, key: BackupKey = KEY) -> bytes:
    out = io.BytesIO()
    assert backup_file.decrypt_stream(io.BytesIO(blob), out, key) == len(out.getvalue())
    return out.getvalue()


def chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    header, body = blob[: backup_file.HEADER_LEN], blob[backup_file.HEADER_LEN :]
    return header, [body[i : i + SEALED_CHUNK] for i in range(0, len(body), SEALED_CHUNK)]


def assert_corrupt(blob: bytes, key: BackupKey = KEY) -> None:
    with pytest.raises(DecryptError) as info:
        decrypt(blob, key)
    assert str(info.value) == CORRUPT


# --- round trips and layout -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 160])
def test_round_trip_around_chunk_boundaries(size: int) -> None:
    data = os.urandom(size)
    blob = encrypt(data)
    n_chunks = size // CHUNK + 1 if size % CHUNK or size == 0 else size // CHUNK
    assert len(blob) == backup_file.HEADER_LEN + size + 16 * n_chunks
    assert decrypt(blob) == data


@FAST
@given(
    chunk_size=st.integers(1, 64),
    data=st.binary(max_size=400),
)
def test_round_trip_property(chunk_size: int, data: bytes) -> None:
    assert decrypt(encrypt(data, chunk_size)) == data


def test_round_trip_default_chunk_size() -> None:
    data = os.urandom(backup_file.DEFAULT_CHUNK_SIZE + 1000)
    out = io.BytesIO()
    backup_file.encrypt_stream(io.BytesIO(data), out, KEY, os.urandom)
    assert len(out.getvalue()) == backup_file.HEADER_LEN + len(data) + 2 * 16
    assert decrypt(out.getvalue()) == data


def test_header_layout_and_fresh_salt() -> None:
    salts = iter([b"\x01" * 32, b"\x02" * 32])
    out = io.BytesIO()
    backup_file.encrypt_stream(io.BytesIO(b"x"), out, KEY, lambda n: next(salts), 300)
    header = out.getvalue()[: backup_file.HEADER_LEN]
    assert header == b"BKVBAK" + b"\x01" + b"\x01" * 32 + (300).to_bytes(4, "big")
    again = io.BytesIO()
    backup_file.encrypt_stream(io.BytesIO(b"x"), again, KEY, lambda n: next(salts), 300)
    assert again.getvalue()[-17:] != out.getvalue()[-17:]  # new salt, new file key


def test_empty_file_has_one_final_empty_chunk() -> None:
    blob = encrypt(b"")
    assert len(blob) == backup_file.HEADER_LEN + 16
    assert decrypt(blob) == b""
    assert_corrupt(blob[: backup_file.HEADER_LEN])


class ShortReads(io.BytesIO):
    """A pipe-like source: never more than 3 bytes per read; records the largest request."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            self.largest = max(self.largest, size)
            size = min(size, 3)
        return super().read(size)


def test_short_reads_and_bounded_read_sizes() -> None:
    data = os.urandom(100)
    src = ShortReads(data)
    out = io.BytesIO()
    backup_file.encrypt_stream(src, out, KEY, os.urandom, CHUNK)
    assert src.largest <= CHUNK
    sealed = ShortReads(out.getvalue())
    plain = io.BytesIO()
    backup_file.decrypt_stream(sealed, plain, KEY)
    assert plain.getvalue() == data
    assert sealed.largest <= backup_file.HEADER_LEN + SEALED_CHUNK


def test_progress_reports_cumulative_bytes() -> None:
    data = os.urandom(40)
    seen: list[int] = []
    out = io.BytesIO()
    backup_file.encrypt_stream(io.BytesIO(data), out, KEY, os.urandom, CHUNK, progress=seen.append)
    assert seen == [16, 32, 40]
    seen.clear()
    backup_file.decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), KEY, progress=seen.append)
    assert seen == [16, 32, 40]


def test_encrypt_rejects_bad_chunk_size() -> None:
    for size in (0, -1, backup_file.MAX_CHUNK_SIZE + 1):
        with pytest.raises(InvalidInput):
            backup_file.encrypt_stream(io.BytesIO(b""), io.BytesIO(), KEY, os.urandom, size)


# --- rejection ------------------------------------------------------------------------------


DATA = os.urandom(3 * CHUNK + 5)
BLOB = encrypt(DATA)


def test_wrong_key_is_the_one_error() -> None:
    assert_corrupt(BLOB, BackupKey(bytes(32)))


def test_every_single_bit_flip_is_rejected() -> None:
    for position in range(len(BLOB)):
        for bit in (0x01, 0x80):
            tampered = bytearray(BLOB)
            tampered[position] ^= bit
            if position <= len(backup_file.MAGIC):  # magic and version: "not a backup file"
                with pytest.raises(InvalidInput):
                    decrypt(bytes(tampered))
            else:
                assert_corrupt(bytes(tampered))


@FAST
@given(
    data=st.binary(max_size=80),
    position=st.integers(0, 10_000),
    delta=st.integers(1, 255),
)
def test_any_single_byte_change_is_rejected(data: bytes, position: int, delta: int) -> None:
    blob = bytearray(encrypt(data))
    position %= len(blob)
    blob[position] ^= delta
    with pytest.raises((InvalidInput, DecryptError)):
        decrypt(bytes(blob))


def test_every_truncation_is_rejected() -> None:
    for length in range(len(BLOB)):
        assert_corrupt(BLOB[:length])


def test_truncation_at_a_chunk_boundary_is_rejected() -> None:
    header, sealed = chunks(encrypt(os.urandom(4 * CHUNK)))
    assert len(sealed) == 4
    for keep in range(4):
        assert_corrupt(header + b"".join(sealed[:keep]))


def test_data_after_the_last_chunk_is_rejected() -> None:
    _, sealed = chunks(BLOB)
    for extra in (b"\x00", os.urandom(15), sealed[0], sealed[-1], os.urandom(200)):
        assert_corrupt(BLOB + extra)
    full = encrypt(os.urandom(2 * CHUNK))
    assert_corrupt(full + b"\x00")
    assert_corrupt(full + chunks(full)[1][-1])


def test_reordered_dropped_or_duplicated_chunks_are_rejected() -> None:
    header, sealed = chunks(BLOB)
    assert len(sealed) == 4
    assert_corrupt(header + sealed[1] + sealed[0] + sealed[2] + sealed[3])
    assert_corrupt(header + sealed[0] + sealed[2] + sealed[3])
    assert_corrupt(header + sealed[0] + sealed[0] + sealed[1] + sealed[2] + sealed[3])
    other_header, other = chunks(encrypt(DATA))
    assert_corrupt(header + other[0] + sealed[1] + sealed[2] + sealed[3])  # chunk of another file
    assert_corrupt(other_header + b"".join(sealed))


def test_edited_chunk_size_is_rejected() -> None:
    for chunk_size in (0, CHUNK - 1, CHUNK + 1, backup_file.MAX_CHUNK_SIZE + 1, 2**32 - 1):
        edited = BLOB[: backup_file.HEADER_LEN - 4] + chunk_size.to_bytes(4, "big")
        assert_corrupt(edited + BLOB[backup_file.HEADER_LEN :])


def test_not_a_backup_file_or_another_version_is_invalid_input() -> None:
    for blob in (b"PK\x03\x04" + bytes(100), b"BKVBAX" + BLOB[6:], b"BKVBAK\x02" + BLOB[7:]):
        with pytest.raises(InvalidInput):
            decrypt(blob)


def test_plaintext_is_written_only_after_its_chunk_verified() -> None:
    header, sealed = chunks(BLOB)
    broken = bytearray(sealed[2])
    broken[0] ^= 1
    out = io.BytesIO()
    with pytest.raises(DecryptError):
        backup_file.decrypt_stream(
            io.BytesIO(header + sealed[0] + sealed[1] + bytes(broken) + sealed[3]), out, KEY
        )
    assert out.getvalue() == DATA[: 2 * CHUNK]
