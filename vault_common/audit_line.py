"""The vault nodes' audit lines (`<node>.audit.jsonl`): the one format, its writer and reader.

Each vault node appends one JSON object per event it handles (`AuditEntry` and `format_line`,
used by `vault_node.audit.AuditLog`); the chaos checker reads them back (`read_audit`):

    {"ts": unix seconds, "node": str, "record_id": hex, "event": one of EVENTS,
     "attempts": int|null      attempts after the commit this event made (or saw),
     "max_attempts": int|null,
     "revision": int|null      etcd revision of the commit this event made, when it made one,
     "generation": hex|null    the record's generation (a new one per registration),
     "evaluation": int|null    the record's evaluation counter (evaluate) or the one redeemed
     "read_revision": int|null} the mod_revision the commit compared against (evaluate, lock,
                                success): above the record's last audited commit, it shows a
                                commit the audit lacks (a write whose answer etcd lost)

Events: `evaluate` (attempts+1 committed, then the OPRF evaluated), `lock` (tombstone
committed), `locked` (answered LOCKED, no write), `success` (attempts reset committed), `bad_mac`
(protocol 3: a wrong finish, the record written back unchanged and committed, so it carries the
revision and read_revision of that commit; no revision when the record was locked meanwhile),
`stale_ticket`, `not_registered` (no write), `register`, `delete` and `reserve` (register start
made the absent key, committed), `tampered` (a stored value that does not open at its etcd
metadata, refused: no write, no evaluation; `read_revision` is the refused value's
mod_revision), `rollback` (the node's store guard saw etcd behind what it had seen, or another
cluster: the node stops serving; a store event with an empty `record_id`), `auth_refused` (a
step 1 whose account signature does not admit it: missing or invalid, another key than the
record's, a replayed or too-future ts_ms; no write, no evaluation), `rebind` (key loss: a pending
rebind key committed, no guess), `rebind_cancel` (the bound key signed: the pending rebind
erased, committed), `reseal` (a fleet rotation wrote the record back unchanged under the
current epoch's key, committed; counters as they were), `fleet` (the node took its token's
fleet key epochs, at start or at a reload: a store event whose `fleet` field holds the accepted
epochs, the seal epoch and their fleet ids, `format_fleet_line`).

The reader is tolerant: the optional fields may be missing, unknown fields are ignored, and a
torn last line (a node killed mid-write) is dropped; an unknown event or a bad value is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from vault_common.jsonl import (
    get_choice,
    get_float,
    get_opt_hex,
    get_opt_int,
    get_str,
    parse_jsonl,
)

EventName = Literal[
    "reserve",
    "tampered",
    "rollback",
    "evaluate",
    "lock",
    "locked",
    "success",
    "bad_mac",
    "stale_ticket",
    "register",
    "delete",
    "not_registered",
    "auth_refused",
    "rebind",
    "rebind_cancel",
    "reseal",
    "fleet",
]
EVENTS: frozenset[str] = frozenset(get_args(EventName))
# Events that commit a write to etcd, and so carry the revision of that commit.
COMMITTING_EVENTS = frozenset(
    {
        "evaluate",
        "lock",
        "success",
        "bad_mac",
        "register",
        "delete",
        "reserve",
        "rebind",
        "rebind_cancel",
        "reseal",
    }
)
# Events whose commit was decided on the value etcd held at `read_revision`.
DECIDED_EVENTS = frozenset({"evaluate", "lock", "success"})
# About the store or the node, not one record: record_id is "".
STORE_EVENTS = frozenset({"rollback", "fleet"})


@dataclass(frozen=True)
class AuditEntry:
    """One event as the node writes it (the writer's view, ids as bytes): counters and ids, no
    secret. `format_line` makes its line; `AuditEvent` is the same line read back."""

    event: EventName
    record_id: bytes
    attempts: int | None = None
    max_attempts: int | None = None
    revision: int | None = None
    generation: bytes | None = None
    evaluation: int | None = None
    read_revision: int | None = None


def format_line(entry: AuditEntry, *, ts_ms: int, node: str) -> str:
    """One audit line (with its newline), as the node writes it.

    >>> format_line(AuditEntry("evaluate", b"\\x01", attempts=1), ts_ms=1500, node="n1")
    '{"ts":1.5,"node":"n1","record_id":"01","event":"evaluate","attempts":1}\\n'
    """
    line: dict[str, object] = {
        "ts": ts_ms / 1000,
        "node": node,
        "record_id": entry.record_id.hex(),
        "event": entry.event,
    }
    revision = entry.revision
    optional: dict[str, object | None] = {
        "attempts": entry.attempts,
        "max_attempts": entry.max_attempts,
        # 0: no commit; negative: a commit whose revision the store did not learn.
        "revision": revision if revision is not None and revision > 0 else None,
        "generation": None if entry.generation is None else entry.generation.hex(),
        "evaluation": entry.evaluation,
        # The mod_revision the commit compared against: a gap to the record's last audited
        # commit shows a write whose answer was lost (committed after etcd timed out).
        "read_revision": entry.read_revision,
    }
    line.update((k, v) for k, v in optional.items() if v is not None)
    return json.dumps(line, separators=(",", ":")) + "\n"


def format_fleet_line(*, ts_ms: int, node: str, fleet: Mapping[str, object]) -> str:
    """The `fleet` line: the key epochs a node took from its token (public values only:
    epochs and fleet ids), e.g. `{"accepted": [1, 2], "seal": 1, "fleet_ids": {...}}`.

    >>> format_fleet_line(ts_ms=1000, node="n1", fleet={"accepted": [1], "seal": 1})
    '{"ts":1.0,"node":"n1","record_id":"","event":"fleet","fleet":{"accepted":[1],"seal":1}}\\n'
    """
    entry = {"ts": ts_ms / 1000, "node": node, "record_id": "", "event": "fleet",
             "fleet": dict(fleet)}  # fmt: skip
    return json.dumps(entry, separators=(",", ":")) + "\n"


@dataclass(frozen=True)
class AuditEvent:
    """One audit line as read back (the reader's view; `format_line` is the writer's)."""

    ts: float
    node: str
    record_id: str
    event: str
    attempts: int | None = None
    max_attempts: int | None = None
    revision: int | None = None
    generation: str | None = None
    evaluation: int | None = None
    read_revision: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "node": self.node,
            "record_id": self.record_id,
            "event": self.event,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "revision": self.revision,
            "generation": self.generation,
            "evaluation": self.evaluation,
            "read_revision": self.read_revision,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AuditEvent:
        store_event = obj.get("event") in STORE_EVENTS and obj.get("record_id") == ""
        record_id = "" if store_event else get_opt_hex(obj, "record_id")
        if record_id is None:
            raise ValueError("field 'record_id' must be a non-empty string")
        return cls(
            ts=get_float(obj, "ts"),
            node=get_str(obj, "node"),
            record_id=record_id,
            event=get_choice(obj, "event", EVENTS),
            attempts=get_opt_int(obj, "attempts"),
            max_attempts=get_opt_int(obj, "max_attempts"),
            revision=get_opt_int(obj, "revision"),
            generation=get_opt_hex(obj, "generation"),
            evaluation=get_opt_int(obj, "evaluation"),
            read_revision=get_opt_int(obj, "read_revision"),
        )


def read_audit(path: Path) -> tuple[AuditEvent, ...]:
    return parse_jsonl(path, AuditEvent.from_json, allow_torn_tail=True)


def read_audits(paths: Iterable[Path]) -> tuple[AuditEvent, ...]:
    """All events of several nodes' files, in file order (the checker orders them itself)."""
    return tuple(event for path in sorted(paths) for event in read_audit(path))


def order_events(events: Iterable[AuditEvent]) -> tuple[AuditEvent, ...]:
    """One record's events in commit order: by (revision, ts).

    An event without a revision (no write, or a node that did not log one) takes the revision of
    the last commit that precedes it in time, so it sorts after that commit; ties go by ts. etcd
    revisions are the only order the nodes agree on, so committed events never move by ts.
    """
    by_time = sorted(events, key=lambda e: e.ts)
    last_revision = -1
    keyed: list[tuple[int, int, float, int, AuditEvent]] = []
    for index, event in enumerate(by_time):
        if event.revision is not None:
            last_revision = max(last_revision, event.revision)
            keyed.append((event.revision, 0, event.ts, index, event))
        else:
            keyed.append((last_revision, 1, event.ts, index, event))
    keyed.sort(key=lambda k: k[:4])
    return tuple(k[4] for k in keyed)


def by_record(events: Iterable[AuditEvent]) -> dict[str, tuple[AuditEvent, ...]]:
    """Events grouped per record_id, each group in commit order (store events left out)."""
    groups: dict[str, list[AuditEvent]] = {}
    for event in events:
        if not event.record_id:
            continue
        groups.setdefault(event.record_id, []).append(event)
    return {rid: order_events(group) for rid, group in sorted(groups.items())}
