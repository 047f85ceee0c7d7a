"""The vault node's audit lines are what the chaos checker reads (deploy.chaos.audit_format)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from deploy.chaos.audit_format import read_audit
from deploy.chaos.history import RecordFormatError
from vault_node.audit import AuditLog, MemoryAudit
from vault_node.key_meta import KeyMeta
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
        reserved, first = await store.reserve(rid, b"a")
        assert first > 0 and reserved.meta == KeyMeta(first, first, 1)
        again, none = await store.reserve(rid, b"b")  # exists: no write, the key as it is
        assert none == 0 and again == reserved
        second, _ = await store.swap(rid, b"c", reserved.meta)
        assert second > first
        assert await store.swap(rid, b"d", reserved.meta) == (0, store.data[rid])
        assert (await store.delete(rid, reserved.meta))[0] == 0
        assert (await store.delete(rid, store.data[rid].meta))[0] > second

    asyncio.run(go())


def test_store_events_carry_an_empty_record_id(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AuditLog(stream, "dc-a-node-1", lambda: 1_700_000_000_000)
    log.write("rollback", b"")
    log.write("tampered", b"\x01", read_revision=9)
    path = tmp_path / "dc-a-node-1.audit.jsonl"
    path.write_text(stream.getvalue())
    rollback, tampered = read_audit(path)
    assert (rollback.event, rollback.record_id) == ("rollback", "")
    assert (tampered.event, tampered.read_revision) == ("tampered", 9)
    path.write_text(stream.getvalue().replace('"rollback"', '"evaluate"', 1))
    with pytest.raises(RecordFormatError, match="record_id"):
        read_audit(path)  # only a store event may name no record


def test_memory_audit_keeps_details() -> None:
    audit = MemoryAudit()
    audit.write("register", b"\x00", 0, 10, revision=5, generation=b"\x09")
    assert audit.events() == ["register"]
    assert audit.details[0]["revision"] == 5 and audit.details[0]["generation"] == b"\x09"
