"""The vault node's audit lines are what the chaos checker reads (deploy.chaos.audit_format)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from deploy.chaos.audit_format import read_audit
from vault_node.audit import AuditLog, MemoryAudit
from vault_node.store import MemoryRecordStore

pytestmark = pytest.mark.unit


def test_audit_lines_carry_revision_generation_and_evaluation(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AuditLog(stream, "dc-a-node-1", lambda: 1_700_000_000_250)
    rid = os.urandom(32)
    log.write("evaluate", rid, 3, 10, revision=42, generation=b"\x01\x02", evaluation=7)
    log.write("not_registered", rid)
    log.write("success", rid, 0, 10, revision=-1, generation=b"\x01\x02", evaluation=7)
    path = tmp_path / "dc-a-node-1.audit.jsonl"
    path.write_text(stream.getvalue())
    first, second, third = read_audit(path)
    assert first.ts == pytest.approx(1_700_000_000.25)
    assert (first.event, first.attempts, first.max_attempts) == ("evaluate", 3, 10)
    assert (first.revision, first.generation, first.evaluation) == (42, "0102", 7)
    assert first.record_id == rid.hex()
    assert (second.event, second.revision, second.attempts) == ("not_registered", None, None)
    assert third.revision is None  # a commit whose revision is unknown is left out, not faked
    assert '"event":"evaluate"' in stream.getvalue()  # compact: what the node tests grep


def test_memory_store_returns_commit_revisions() -> None:
    import asyncio

    async def go() -> None:
        store = MemoryRecordStore()
        rid = os.urandom(32)
        first = await store.put(rid, b"a", 0)
        assert first > 0 and await store.put(rid, b"b", 0) == 0
        second = await store.put(rid, b"c", first)
        assert second > first and await store.delete(rid, first) == 0
        assert await store.delete(rid, second) > second

    asyncio.run(go())


def test_memory_audit_keeps_details() -> None:
    audit = MemoryAudit()
    audit.write("register", b"\x00", 0, 10, revision=5, generation=b"\x09")
    assert audit.events() == ["register"]
    assert audit.details[0]["revision"] == 5 and audit.details[0]["generation"] == b"\x09"
