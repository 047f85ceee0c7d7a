"""The vault nodes' audit lines (`<node>.audit.jsonl`), as the chaos checker reads them.

Each vault node appends one JSON object per event it handles (the node writes them itself; it
does not import this module):

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
cluster: the node stops serving; a store event with an empty `record_id`).

The reader is tolerant: the optional fields may be missing, unknown fields are ignored, and a
torn last line (a node killed mid-write) is dropped; an unknown event or a bad value is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.chaos.history import (
    get_choice,
    get_float,
    get_opt_hex,
    get_opt_int,
    get_str,
    parse_jsonl,
)

EVENTS = frozenset(
    {
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
    }
)
# Events that commit a write to etcd, and so carry the revision of that commit.
COMMITTING_EVENTS = frozenset(
    {"evaluate", "lock", "success", "bad_mac", "register", "delete", "reserve"}
)
# Events whose commit was decided on the value etcd held at `read_revision`.
DECIDED_EVENTS = frozenset({"evaluate", "lock", "success"})
STORE_EVENTS = frozenset({"rollback"})  # about the store, not one record: record_id is ""


@dataclass(frozen=True)
class AuditEvent:
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
