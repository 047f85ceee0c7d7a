"""vault_node.store_guard, checkpoint, compactor and the audit log's high-water mark."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bkv.v1 import sealed_pb2
from vault_node.audit import AuditLog, high_water_from_audit
from vault_node.checkpoint import (
    CHECKPOINT_LABEL,
    CLUSTER_PIN_LABEL,
    Checkpointer,
    CheckpointError,
    encode_cluster_id,
    latest_checkpoint,
    load_state,
    write_state,
)
from vault_node.compactor import Compactor
from vault_node.soft_token import SoftToken
from vault_node.store_guard import GuardState, StoreGuard, StoreRolledBack

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

CLUSTER = 0x1234_5678_9ABC_DEF0


def test_revisions_may_come_back_in_any_order_but_never_below_the_floor() -> None:
    guard = StoreGuard(GuardState(cluster_id=CLUSTER))
    floor = guard.floor()
    guard.observe(CLUSTER, 100, floor)
    guard.observe(CLUSTER, 90, floor)  # sent at the same time as the 100: fine
    assert guard.high_water == 100
    alarms: list[str] = []
    guard = StoreGuard(guard.state(), on_alarm=alarms.append)
    with pytest.raises(StoreRolledBack, match="rolled back"):
        guard.observe(CLUSTER, 99, guard.floor())
    assert alarms and guard.alarm
    # Latched: later answers above the old mark do not clear it.
    with pytest.raises(StoreRolledBack):
        guard.observe(CLUSTER, 1000, guard.floor())
    with pytest.raises(StoreRolledBack):
        guard.check()
    assert guard.state().alarm_revision == 99


def test_another_cluster_is_refused_and_the_first_one_is_pinned_when_none_was() -> None:
    pinned: list[int] = []
    guard = StoreGuard(GuardState(), on_pin=pinned.append)
    guard.observe(CLUSTER, 5, 0)
    assert pinned == [CLUSTER] and guard.state().cluster_id == CLUSTER
    with pytest.raises(StoreRolledBack, match="another store"):
        guard.observe(CLUSTER + 1, 6, guard.floor())


def test_checkpoints_keep_the_highest_sequence_and_the_alarm() -> None:
    token = SoftToken()
    assert load_state(token, 0) == (GuardState(), 0)
    write_state(token, GuardState(CLUSTER, 50), 1)
    # A crash between making the new object and destroying the old one leaves both.
    older = sealed_pb2.StoreCheckpoint(sequence=1, cluster_id=CLUSTER, high_water=50)
    newer = sealed_pb2.StoreCheckpoint(sequence=2, cluster_id=CLUSTER, high_water=70, alarm="x")
    token.data[CHECKPOINT_LABEL] = [newer.SerializeToString(), older.SerializeToString()]
    assert latest_checkpoint(token).sequence == 2
    state, sequence = load_state(token, audit_high_water=65)
    assert (state.high_water, state.alarm, sequence) == (70, "x", 2)
    assert load_state(token, audit_high_water=90)[0].high_water == 90  # the audit log knows more
    token.data[CHECKPOINT_LABEL] = [b"\xff" * 10]
    with pytest.raises(CheckpointError):
        load_state(token, 0)


def test_the_ceremony_pin_wins_and_must_agree_with_the_checkpoint() -> None:
    token = SoftToken()
    token.replace_data(CLUSTER_PIN_LABEL, encode_cluster_id(CLUSTER))
    assert load_state(token, 0)[0].cluster_id == CLUSTER
    write_state(token, GuardState(CLUSTER + 1, 3), 1)
    with pytest.raises(CheckpointError, match="another etcd cluster"):
        load_state(token, 0)
    with pytest.raises(ValueError):
        encode_cluster_id(0)


def test_the_checkpointer_probes_saves_and_saves_at_once_after_an_alarm() -> None:
    async def go() -> None:
        token = SoftToken()
        checkpointer: Checkpointer | None = None
        guard = StoreGuard(
            GuardState(cluster_id=CLUSTER),
            on_alarm=lambda reason: checkpointer.wake() if checkpointer else None,
        )
        probes: list[int] = []
        revisions = iter([10, 20, 5])

        async def probe() -> None:
            revision = next(revisions, 30)
            probes.append(revision)
            guard.observe(CLUSTER, revision, guard.floor())

        checkpointer = Checkpointer(token, guard, 0, interval_s=0.01, probe=probe)
        checkpointer.start()
        for _ in range(500):
            if guard.alarm and latest_checkpoint(token).alarm:
                break
            await asyncio.sleep(0.01)
        await checkpointer.stop()
        saved = latest_checkpoint(token)
        assert saved.alarm and saved.high_water == 20 and saved.alarm_revision == 5
        assert probes[:3] == [10, 20, 5]
        assert len(probes) == 3  # an alarmed guard probes no more

    asyncio.run(go())


def test_the_compactor_coalesces_erasures_and_retries_until_it_succeeds() -> None:
    async def go() -> None:
        calls: list[int] = []
        failures = iter([True, False])

        async def compact(revision: int) -> None:
            calls.append(revision)
            if next(failures, False):
                raise ConnectionError("etcd down")

        compactor = Compactor(compact, delay_s=0.01)
        compactor.start()
        compactor.note(5)
        compactor.note(9)
        compactor.note(7)
        for _ in range(500):
            if compactor.compacted == 9:
                break
            await asyncio.sleep(0.01)
        await compactor.stop()
        assert compactor.compacted == 9 and compactor.pending == 0
        assert calls == [9, 9]  # one compaction for three erasures, then its retry

    asyncio.run(go())


def test_the_audit_log_tail_gives_the_highest_commit_revision(tmp_path: Path) -> None:
    path = tmp_path / "node.audit.jsonl"
    assert high_water_from_audit(str(path)) == 0
    log = AuditLog.open(str(path), "n1", lambda: 0)
    log.write("evaluate", b"\x01", 1, 10, revision=41)
    log.write("not_registered", b"\x02")
    log.write("success", b"\x01", 0, 10, revision=40)  # concurrent commits land out of order
    log.close()
    with path.open("a") as f:
        f.write(json.dumps({"revision": True}) + "\n" + '{"revision": 99')  # a torn last line
    assert high_water_from_audit(str(path)) == 41
    assert high_water_from_audit(str(path), tail_bytes=60) in (0, 40, 41)


def test_audit_lines_before_the_operators_acceptance_do_not_raise_the_mark(tmp_path: Path) -> None:
    """After `store-alarm-clear` (accepted_at_ms), the revisions of the store it replaced,
    still in the audit log, no longer bring the mark (and the alarm) straight back."""
    path = tmp_path / "node.audit.jsonl"
    clock = {"ms": 1_000}
    log = AuditLog.open(str(path), "n1", lambda: clock["ms"])
    log.write("evaluate", b"\x01", 1, 10, revision=900)  # the replaced store's revision
    clock["ms"] = 5_000
    log.write("evaluate", b"\x01", 2, 10, revision=120)  # on the accepted store
    log.close()
    assert high_water_from_audit(str(path)) == 900
    assert high_water_from_audit(str(path), since_ms=4_000) == 120
    assert high_water_from_audit(str(path), since_ms=6_000) == 0
