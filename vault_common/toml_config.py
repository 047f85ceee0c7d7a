"""Reading a TOML config file, the same way in every part: one error type, unknown-key checks.

Each config module keeps its own dataclasses, messages and `validate()`; this is only the
plumbing under them. The error never quotes the file's contents (a config may name secrets'
files, and a bad line may hold one); callers word the message from `cause`.

>>> unknown_keys({"frontends": [], "typo": 1}, {"frontends", "ca"})
['typo']
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any


class TomlReadError(Exception):
    """The file could not be read, is not UTF-8 or is not valid TOML (see `cause`)."""

    def __init__(self, path: str | os.PathLike[str], cause: Exception) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {type(cause).__name__}")

    @property
    def missing(self) -> bool:
        """There is no such file."""
        return isinstance(self.cause, FileNotFoundError)

    @property
    def invalid(self) -> bool:
        """The file was read but is not valid TOML (or not UTF-8)."""
        return not isinstance(self.cause, OSError)

    def problem(self) -> str:
        """One line for a config's list of problems: why the file could not be read, or where
        it is not valid TOML (tomllib's position, never a quote of the file)."""
        if isinstance(self.cause, OSError):
            return f"{self.path}: cannot read: {self.cause.strerror}"
        return f"{self.path}: not valid TOML: {self.cause}"


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tables of the TOML file at `path`; TomlReadError when it cannot be had."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise TomlReadError(path, err) from err


def unknown_keys(table: Mapping[str, Any], known: Iterable[str]) -> list[str]:
    """The keys of `table` that are not in `known`, in the file's order."""
    allowed = set(known)
    return [key for key in table if key not in allowed]
