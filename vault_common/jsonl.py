"""Reading JSON-lines records strictly: typed field getters and one line-numbered error.

Shared by the audit line (`vault_common.audit_line`) and the chaos tool's own records.

>>> get_opt_int({"attempts": 3}, "attempts")
3
>>> get_opt_hex({"record_id": "zz"}, "record_id")
Traceback (most recent call last):
...
ValueError: field 'record_id' must be hex
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class RecordFormatError(ValueError):
    """A history, audit, faults or run file holds a line that is not a valid record."""

    def __init__(self, path: Path | str, line: int, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")


# -- field validation (raise ValueError with the problem; readers add file and line) -----------


def get_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {name!r} must be a non-empty string")
    return value


def get_opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    return None if obj.get(name) is None else get_str(obj, name)


def get_float(obj: Mapping[str, Any], name: str) -> float:
    value = obj.get(name)
    # bool is an int in Python; JSON `true` is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field {name!r} must be a finite number")
    return float(value)


def get_opt_float(obj: Mapping[str, Any], name: str) -> float | None:
    return None if obj.get(name) is None else get_float(obj, name)


def get_opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field {name!r} must be a non-negative integer or null")
    return value


def get_bool(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise ValueError(f"field {name!r} must be true or false")
    return value


def get_choice(obj: Mapping[str, Any], name: str, choices: frozenset[str]) -> str:
    value = get_str(obj, name)
    if value not in choices:
        raise ValueError(f"field {name!r}: unknown value {value!r}")
    return value


def get_opt_hex(obj: Mapping[str, Any], name: str, length: int | None = None) -> str | None:
    value = get_opt_str(obj, name)
    if value is None:
        return None
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"field {name!r} must be hex") from None
    if length is not None and len(value) != length:
        raise ValueError(f"field {name!r} must be {length} hex digits")
    return value


def reject_unknown(obj: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")


def parse_jsonl(
    path: Path,
    parse: Callable[[Mapping[str, Any]], T],
    *,
    allow_torn_tail: bool = False,
) -> tuple[T, ...]:
    """Parse every non-blank line of `path` with `parse`; the first bad line raises.

    `allow_torn_tail`: a last line without its newline that does not parse is dropped — a
    writer killed mid-line (a chaos fault) leaves one; any other bad line is still an error.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[T] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("line is not a JSON object")
            records.append(parse(obj))
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            torn = number == len(lines) and not text.endswith("\n")
            if allow_torn_tail and torn:
                break
            raise RecordFormatError(path, number, str(err)) from None
    return tuple(records)
