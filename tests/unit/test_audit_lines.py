"""The vault node's audit lines are what the chaos checker reads (vault_common.audit_line)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from bkv_chaos.history import RecordFormatError
from vault_common.audit_line import read_audit
from vault_node.audit import AuditLog, MemoryAudit
from vault_node.key_meta import ABSENT, KeyMeta
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
        first, none = await store.write(rid, b"a", ABSENT, 3, b"h1", ABSENT)
        assert first > 0 and none is None
        created = store.data[rid]
        assert created.meta == KeyMeta(first, first, 1)
        head = store.heads[3].meta
        again, current = await store.write(rid, b"b", ABSENT, 3, b"h", head)
        assert again == 0 and current is not None and current.record == created
        second, _ = await store.write(rid, b"c", created.meta, 3, b"h2", head)
        assert second > first
        assert (await store.write(rid, None, created.meta, 3, b"h", store.heads[3].meta))[0] == 0
        now = store.data[rid].meta
        assert (await store.write(rid, None, now, 3, b"h3", store.heads[3].meta))[0] > second
        assert rid not in store.data

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
