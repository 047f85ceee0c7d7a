"""The audit log: one JSON line per attempt-relevant event, flushed as it is written.

Lines hold the time, the node, the hex record id, the event and the counters, never a secret.
The chaos checker counts `evaluate` lines per record to prove the guess limit, so each line is
flushed before the caller goes on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Literal, Protocol, TextIO

AuditEvent = Literal[
    "evaluate",
    "lock",
    "locked",
    "success",
    "bad_mac",
    "stale_ticket",
    "register",
    "delete",
    "not_registered",
]


class AuditSink(Protocol):
    def write(
        self,
        event: AuditEvent,
        record_id: bytes,
        attempts: int | None = None,
        max_attempts: int | None = None,
    ) -> None: ...


class AuditLog:
    """JSON-lines audit log on a text stream (the node opens its `audit_log` file for append)."""

    def __init__(self, stream: TextIO, node: str, clock_ms: Callable[[], int]) -> None:
        self._stream = stream
        self._node = node
        self._clock_ms = clock_ms
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str, node: str, clock_ms: Callable[[], int]) -> AuditLog:
        return cls(open(path, "a", encoding="utf-8", buffering=1), node, clock_ms)

    def write(
        self,
        event: AuditEvent,
        record_id: bytes,
        attempts: int | None = None,
        max_attempts: int | None = None,
    ) -> None:
        entry: dict[str, object] = {
            "ts": self._clock_ms(),
            "node": self._node,
            "record_id": record_id.hex(),
            "event": event,
        }
        if attempts is not None:
            entry["attempts"] = attempts
        if max_attempts is not None:
            entry["max"] = max_attempts
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.close()


class MemoryAudit:
    """Collects audit entries in a list (unit tests)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, bytes, int | None, int | None]] = []

    def write(
        self,
        event: AuditEvent,
        record_id: bytes,
        attempts: int | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.entries.append((event, record_id, attempts, max_attempts))

    def events(self) -> list[str]:
        return [e[0] for e in self.entries]
