"""The audit log: one JSON line per attempt-relevant event, flushed as it is written.

Lines hold the time (unix seconds), the node, the hex record id, the event and the counters,
never a secret. The chaos checker (`vault_common.audit_line` defines the line) counts
`evaluate` lines per record to prove the guess limit and orders them by `revision`, the etcd
revision of the commit the event made; so each line is flushed before the caller goes on.

The log is also the node's memory of the revisions it committed: a restarted node takes its
store high-water mark from the last lines (`high_water_from_audit`), which were flushed before
the evaluations they count.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TextIO

from vault_common.audit_line import AuditEntry, EventName, format_fleet_line, format_line

AUDIT_TAIL_BYTES = 1 << 20

AuditEvent = EventName  # the event names of an audit line (vault_common.audit_line)


class AuditSink(ABC):
    """Where the service's audit events go. `write` is the one call the service makes; each
    sink only says what it does with the entry (`record`)."""

    def write(
        self,
        event: AuditEvent,
        record_id: bytes,
        attempts: int | None = None,
        max_attempts: int | None = None,
        *,
        revision: int | None = None,
        generation: bytes | None = None,
        evaluation: int | None = None,
        read_revision: int | None = None,
    ) -> None:
        self.record(
            AuditEntry(
                event, record_id, attempts, max_attempts, revision, generation, evaluation,
                read_revision,
            )
        )  # fmt: skip

    @abstractmethod
    def record(self, entry: AuditEntry) -> None:
        """Keep `entry` (for the log: written and flushed before this returns)."""


class AuditLog(AuditSink):
    """JSON-lines audit log on a text stream (the node opens its `audit_log` file for append)."""

    def __init__(self, stream: TextIO, node: str, clock_ms: Callable[[], int]) -> None:
        self._stream = stream
        self._node = node
        self._clock_ms = clock_ms
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str, node: str, clock_ms: Callable[[], int]) -> AuditLog:
        return cls(open(path, "a", encoding="utf-8", buffering=1), node, clock_ms)

    def record(self, entry: AuditEntry) -> None:
        line = format_line(entry, ts_ms=self._clock_ms(), node=self._node)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def write_fleet(self, fleet: dict[str, object]) -> None:
        """The `fleet` line: the key epochs the node took (vault_node.fleet_keys)."""
        line = format_fleet_line(ts_ms=self._clock_ms(), node=self._node, fleet=fleet)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.close()


def high_water_from_audit(
    path: str, tail_bytes: int = AUDIT_TAIL_BYTES, *, since_ms: int = 0
) -> int:
    """The highest commit `revision` in the last `tail_bytes` of the audit log (0 if none),
    among lines written at or after `since_ms` (the operator's last acceptance of the store:
    the revisions of a store it replaced no longer count).

    Lines are appended in commit order give or take concurrent requests, so the last megabyte
    holds the highest revisions; a torn or foreign line is skipped, a missing file is 0.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            tail = f.read()
    except FileNotFoundError:
        return 0
    best = 0
    for line in tail.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        revision = entry.get("revision") if isinstance(entry, dict) else None
        ts = entry.get("ts") if isinstance(entry, dict) else None
        if since_ms and not (isinstance(ts, int | float) and ts * 1000 >= since_ms):
            continue
        if isinstance(revision, int) and not isinstance(revision, bool) and revision > best:
            best = revision
    return best


class MemoryAudit(AuditSink):
    """Collects audit entries in a list (unit tests)."""

    def __init__(self) -> None:
        self.lines: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.lines.append(entry)

    @property
    def entries(self) -> list[tuple[str, bytes, int | None, int | None]]:
        """(event, record id, attempts, max attempts) of every entry."""
        return [(e.event, e.record_id, e.attempts, e.max_attempts) for e in self.lines]

    @property
    def details(self) -> list[dict[str, int | bytes | None]]:
        """The commit details of every entry (revision, generation, evaluation, read_revision)."""
        return [
            {
                "revision": e.revision,
                "generation": e.generation,
                "evaluation": e.evaluation,
                "read_revision": e.read_revision,
            }
            for e in self.lines
        ]

    def events(self) -> list[str]:
        return [e.event for e in self.lines]
