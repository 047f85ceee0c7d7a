"""Encrypting and decrypting a backup file on disk (no network): atomic output, typed errors.

The format itself is `vault_protocol.backup_file` (pure, streaming); this module adds the files:
the output appears only complete, and every failure to decrypt is one `CorruptBackup`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from client.errors import BadInput
from vault_protocol import backup_file
from vault_protocol import errors as vp_errors
from vault_protocol.backup_key import BackupKey

__all__ = ["CorruptBackup", "PathArg", "Progress", "decrypt_backup", "encrypt_backup"]

Progress = Callable[[int], None]
PathArg = str | os.PathLike[str]
_CORRUPT = "the backup file is corrupt, truncated or the key is wrong"


class CorruptBackup(BadInput):
    """The backup file is corrupt, truncated, not a backup, or the key is wrong.

    Retry: never as is (the same bytes and key fail the same way).
    """


@contextlib.contextmanager
def _atomic_output(dst: PathArg) -> Iterator[BinaryIO]:
    """A temp file beside `dst`, renamed onto it only when the block succeeds; removed otherwise."""
    target = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_source(src: PathArg) -> BinaryIO:
    try:
        return open(src, "rb")  # closed by the caller's `with`
    except OSError as err:
        raise BadInput(f"cannot read {src}: {err.strerror}") from None


def _file_to_file(
    src: PathArg, dst: PathArg, transform: Callable[[BinaryIO, BinaryIO], int]
) -> int:
    """`transform(src, dst)` on open files, `dst` written atomically; file errors as BadInput."""
    with _open_source(src) as fin:
        try:
            with _atomic_output(dst) as fout:
                return transform(fin, fout)
        except OSError as err:
            raise BadInput(f"cannot write {dst}: {err.strerror}") from None


def encrypt_backup(
    src: PathArg,
    dst: PathArg,
    key: BackupKey,
    *,
    progress: Progress | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> int:
    """Encrypt file `src` into `dst` in constant memory; returns the plaintext size.

    `dst` appears only complete (written beside it, then renamed).
    """
    return _file_to_file(
        src,
        dst,
        lambda fin, fout: backup_file.encrypt_stream(fin, fout, key, rng, progress=progress),
    )


def decrypt_backup(
    src: PathArg, dst: PathArg, key: BackupKey, *, progress: Progress | None = None
) -> int:
    """Decrypt backup file `src` into `dst` in constant memory; returns the plaintext size.

    Raises CorruptBackup for any failure to decrypt (one error whatever the cause: no oracle);
    `dst` is then left untouched.
    """

    def decrypt(fin: BinaryIO, fout: BinaryIO) -> int:
        try:
            return backup_file.decrypt_stream(fin, fout, key, progress=progress)
        except vp_errors.ProtocolError:
            raise CorruptBackup(_CORRUPT) from None

    return _file_to_file(src, dst, decrypt)
