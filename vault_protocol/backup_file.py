"""The encrypted backup file: a streaming, chunked AES-256-GCM format under the backup key K.

Layout::

    header = b"BKVBAK" || version (1 byte) || salt (32 random bytes) || chunk_size (u32 BE)
    body   = sealed chunk 0 || sealed chunk 1 || ... || sealed final chunk

* file key = HKDF-SHA256(K, salt, info=b"bkv-v1 backup-file"): a fresh key per file, so chunk
  nonces never repeat under one key even though they are counters.
* every chunk holds `chunk_size` plaintext bytes except the final one (0..chunk_size bytes; an
  empty file still has one empty final chunk) and is AES-256-GCM with
  nonce = chunk index (11 bytes, big-endian) || last-flag (1 byte, 0 or 1),
  AAD = header || last-flag.

The index in the nonce stops reordering, the flag stops truncation at a chunk boundary and data
after the final chunk, the header in the AAD stops header edits; every such failure is the one
`DecryptError` (no oracle). Memory is constant: one chunk (plus one for look-ahead) at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault_protocol.backup_key import BackupKey
from vault_protocol.errors import DecryptError, InvalidInput, ProtocolError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_LEN",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "VERSION",
    "decrypt_stream",
    "encrypt_stream",
]

MAGIC = b"BKVBAK"
VERSION = 1
SALT_LEN = 32
HEADER_LEN = len(MAGIC) + 1 + SALT_LEN + 4
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 1 << 24  # bounds the memory an untrusted header can make the reader allocate
FILE_KEY_INFO = b"bkv-v1 backup-file"
TAG_LEN = 16
_INDEX_LEN = 11
_MAX_CHUNKS = 1 << (8 * _INDEX_LEN)
_CORRUPT = "backup file is corrupt, truncated or encrypted with another key"

Progress = Callable[[int], None]


def _file_key(key: BackupKey, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=FILE_KEY_INFO)
    return AESGCM(hkdf.derive(bytes(key)))


def _nonce(index: int, last: bool) -> bytes:
    if index >= _MAX_CHUNKS:
        raise ProtocolError("backup file has too many chunks")
    return index.to_bytes(_INDEX_LEN, "big") + (b"\x01" if last else b"\x00")


def _read_full(src: BinaryIO, n: int) -> bytes:
    """Read exactly `n` bytes, or fewer only at end of stream (pipes may return short reads)."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: BackupKey,
    rng: Callable[[int], bytes],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> int:
    """Encrypt everything readable from `src` into `dst`; returns the plaintext byte count.

    `progress`, if given, is called after each chunk with the plaintext bytes processed so far.
    A caller writing to a file should write to a temporary file and rename it on success, so
    that an interrupted run never leaves a partial backup under the final name.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk size must be between 1 and {MAX_CHUNK_SIZE}")
    salt = rng(SALT_LEN)
    if len(salt) != SALT_LEN:
        raise ProtocolError("rng returned the wrong number of bytes")
    header = MAGIC + bytes([VERSION]) + salt + chunk_size.to_bytes(4, "big")
    aead = _file_key(key, salt)
    dst.write(header)

    total = 0
    index = 0
    current = _read_full(src, chunk_size)
    while True:
        # Look ahead one chunk: only a chunk with nothing after it may carry the last flag.
        following = _read_full(src, chunk_size) if len(current) == chunk_size else b""
        last = not following
        flag = b"\x01" if last else b"\x00"
        dst.write(aead.encrypt(_nonce(index, last), current, header + flag))
        total += len(current)
        if progress is not None:
            progress(total)
        if last:
            return total
        current = following
        index += 1


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: BackupKey,
    progress: Progress | None = None,
) -> int:
    """Decrypt a backup file from `src` into `dst`; returns the plaintext byte count.

    Each chunk's plaintext is written only after its tag verified, but a later chunk may still
    fail: **a caller writing to a file must write to a temporary file and rename it only when
    this returns**, and delete it on error. Raises `InvalidInput` if `src` is not a backup file
    (wrong magic or version) and `DecryptError` for anything else that fails — corruption,
    truncation, extra or reordered data, or another key. `progress`, if given, is called after
    each chunk with the plaintext bytes written so far.
    """
    header = _read_full(src, HEADER_LEN)
    if header[: len(MAGIC)] != MAGIC[: len(header)]:
        raise InvalidInput("not a backup file")
    if len(header) > len(MAGIC) and header[len(MAGIC)] != VERSION:
        raise InvalidInput("unsupported backup file version")
    if len(header) < HEADER_LEN:
        raise DecryptError(_CORRUPT)
    salt = header[len(MAGIC) + 1 : len(MAGIC) + 1 + SALT_LEN]
    chunk_size = int.from_bytes(header[-4:], "big")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptError(_CORRUPT)  # an edited header: the same error as any other edit
    aead = _file_key(key, salt)
    sealed_size = chunk_size + TAG_LEN

    total = 0
    index = 0
    carry = b""
    while True:
        block = carry + _read_full(src, sealed_size - len(carry))
        if len(block) == sealed_size:
            # A full block is the last one only if the stream ends right after it.
            carry = _read_full(src, 1)
            last = not carry
        else:
            last = True  # a short block is the end of the stream
        flag = b"\x01" if last else b"\x00"
        try:
            plaintext = aead.decrypt(_nonce(index, last), block, header + flag)
        except InvalidTag:  # also raised for a block shorter than a tag
            raise DecryptError(_CORRUPT) from None
        dst.write(plaintext)
        total += len(plaintext)
        if progress is not None:
            progress(total)
        if last:
            return total
        index += 1
