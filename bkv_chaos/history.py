"""The chaos run's own records: client history, fault windows, run facts; JSON lines in and out.

A run directory holds, in the history's time base (seconds since the run started, monotonic):

* `history.jsonl` — one `HistoryOp` per client operation, written when it returns. As in etcd's
  robustness tests and Jepsen, `definite=false` means "may or may not have happened" (deadline,
  UNAVAILABLE after the request was sent); the checker never counts such an outcome as a fact.
* `faults.jsonl` — one `Fault` per injected fault, written when it is healed (or at the end).
* `run.json` — one `RunInfo`: the unix time of the run's start (to place the nodes' audit lines,
  which carry unix time, in the same time base) and whether every process was alive at the end.

Readers validate every line and raise `RecordFormatError` naming the file and the line number.
Nothing here holds a secret: keys appear only as `key_fingerprint` (SHA-256, hex).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from vault_common.jsonl import (
    RecordFormatError,
    get_bool,
    get_choice,
    get_float,
    get_opt_float,
    get_opt_hex,
    get_opt_int,
    get_opt_str,
    get_str,
    parse_jsonl,
    reject_unknown,
)

HISTORY_FILE = "history.jsonl"
FAULTS_FILE = "faults.jsonl"
RUN_FILE = "run.json"
AUDIT_GLOB = "*.audit.jsonl"

OPS = frozenset(
    {"register", "recover", "wrong_recover", "delete", "status", "final_recover", "bad_input"}
)
OUTCOMES = frozenset(
    {
        "ok",
        "invalid_password",
        "locked",
        "not_registered",
        "unavailable",
        "rate_limited",
        "unauthenticated",
        "protocol",
        "bad_input_rejected",
        "internal",
        "crash",
        # DATA_LOSS (client.errors.RecordTampered): the vault refused the stored record or its
        # group (written by storage, or rolled back): definite, nothing evaluated, no key.
        "tampered",
    }
)
# The fault kind during which etcd has no quorum: invariant 4 (fail closed) is checked against it.
LOSE_QUORUM = "lose-quorum"
# The fault kind of a store rolled back to a snapshot and then accepted by the operator
# (`bkv-chaos --scenario rollback`); its `facts` say what the checker needs (checker.py).
ROLLBACK = "rollback"

T = TypeVar("T")


def key_fingerprint(key: bytes) -> str:
    """Hex SHA-256 of a backup key: what histories record instead of the key itself."""
    return hashlib.sha256(key).hexdigest()


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryOp:
    """One client operation, from invoke to return.

    `account` is the account the operation names; `actor` the account whose session made the
    call (None: the same). `key_fp` is the fingerprint of the key registered, or recovered.
    `status_code` is the gRPC status name a `bad_input` operation got back.
    """

    client: str
    op: str
    account: str
    invoke: float
    complete: float
    outcome: str
    definite: bool
    guesses_left: int | None = None
    key_fp: str | None = None
    status_code: str | None = None
    actor: str | None = None

    @property
    def is_definite_ok(self) -> bool:
        return self.definite and self.outcome == "ok"

    @property
    def cross_account(self) -> bool:
        return self.actor is not None and self.actor != self.account

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client": self.client,
            "op": self.op,
            "account": self.account,
            "invoke": self.invoke,
            "complete": self.complete,
            "outcome": self.outcome,
            "definite": self.definite,
            "guesses_left": self.guesses_left,
            "key_fp": self.key_fp,
            "status_code": self.status_code,
        }
        if self.actor is not None:
            out["actor"] = self.actor
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HistoryOp:
        reject_unknown(obj, _HISTORY_FIELDS)
        op = cls(
            client=get_str(obj, "client"),
            op=get_choice(obj, "op", OPS),
            account=get_str(obj, "account"),
            invoke=get_float(obj, "invoke"),
            complete=get_float(obj, "complete"),
            outcome=get_choice(obj, "outcome", OUTCOMES),
            definite=get_bool(obj, "definite"),
            guesses_left=get_opt_int(obj, "guesses_left"),
            key_fp=get_opt_hex(obj, "key_fp", 64),
            status_code=get_opt_str(obj, "status_code"),
            actor=get_opt_str(obj, "actor"),
        )
        if op.complete < op.invoke:
            raise ValueError("complete is before invoke")
        return op


_HISTORY_FIELDS = frozenset(
    {
        "client",
        "op",
        "account",
        "invoke",
        "complete",
        "outcome",
        "definite",
        "guesses_left",
        "key_fp",
        "status_code",
        "actor",
    }
)


@dataclass(frozen=True)
class Fault:
    """One injected fault, `start` to `end` (None: never healed during the run).

    `recovered_at` is the driver's own note of the first definite success after `end`; the
    checker recomputes it from the history and reports its own value. `facts` are numbers a
    fault kind records for the checker (times in the history's clock, revisions): see
    `bkv_chaos.checker.RollbackWindow` for a `rollback`'s. Written only when not empty.
    """

    kind: str
    target: str
    start: float
    end: float | None
    recovered_at: float | None = None
    facts: Mapping[str, float] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "target": self.target,
            "start": self.start,
            "end": self.end,
            "recovered_at": self.recovered_at,
        }
        if self.facts:
            out["facts"] = dict(self.facts)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Fault:
        reject_unknown(obj, frozenset({"kind", "target", "start", "end", "recovered_at", "facts"}))
        facts = obj.get("facts", {})
        if not isinstance(facts, dict):
            raise ValueError("field 'facts' must be an object")
        fault = cls(
            kind=get_str(obj, "kind"),
            target=get_str(obj, "target"),
            start=get_float(obj, "start"),
            end=get_opt_float(obj, "end"),
            recovered_at=get_opt_float(obj, "recovered_at"),
            facts={str(name): get_float(facts, name) for name in facts},
        )
        if fault.end is not None and fault.end < fault.start:
            raise ValueError("end is before start")
        return fault


@dataclass(frozen=True)
class RunInfo:
    """Facts about the run as a whole (`run.json`)."""

    start_unix: float  # time.time() at the instant the history's clock read 0
    processes_alive: bool  # every cluster process was still running at the end (invariant 7)

    def to_json(self) -> dict[str, Any]:
        return {"start_unix": self.start_unix, "processes_alive": self.processes_alive}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunInfo:
        reject_unknown(obj, frozenset({"start_unix", "processes_alive"}))
        return cls(
            start_unix=get_float(obj, "start_unix"),
            processes_alive=get_bool(obj, "processes_alive"),
        )


# -- reading and writing ----------------------------------------------------------------------


def read_history(path: Path) -> tuple[HistoryOp, ...]:
    return parse_jsonl(path, HistoryOp.from_json)


def read_faults(path: Path) -> tuple[Fault, ...]:
    return parse_jsonl(path, Fault.from_json)


def read_run_info(path: Path) -> RunInfo:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return RunInfo.from_json(obj)
    except ValueError as err:
        raise RecordFormatError(path, 1, str(err)) from None


def write_run_info(path: Path, info: RunInfo) -> None:
    path.write_text(json.dumps(info.to_json(), sort_keys=True) + "\n", encoding="utf-8")


class JsonRecord(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class JsonlWriter:
    """Appends records as JSON lines; thread-safe; each line is flushed as soon as it is written.

    Used for `history.jsonl` and `faults.jsonl` (`HistoryOp`, `Fault`): a killed driver loses at
    most the line it was writing, which the readers report with its line number.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file: TextIO = path.open("a", encoding="utf-8")

    def append(self, record: JsonRecord) -> None:
        line = json.dumps(record.to_json(), sort_keys=True, allow_nan=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
